"""Parallel helpers: MPI (mpi4py), torch.distributed, DeepSpeed/FSDP wrapping, ipyparallel.

Modules, by job:

===============  ======================================================================
``mpi``          a communicator or a serial stand-in, aborts that end the whole job,
                 exact reductions, sub-communicators, a sleeping barrier, the node layout
``halo``         1-D slab decomposition of a ring and its halo exchange
``fingerprint``  an exact, split-independent fingerprint of a distributed array
``distributed``  torch.distributed: launcher discovery, the process group, DDP / FSDP /
                 DeepSpeed wrapping
``engines``      ipyparallel MPI engines for JupyterLab
===============  ======================================================================

Every public name of ``mpi``, ``halo``, ``fingerprint`` and ``distributed`` is importable
from ``turbda_kit.parallel``. ``mpi`` needs only numpy and is imported at once; the modules
that import torch are loaded on first use of one of their names, so that MPI-only ranks
(preprocessing) start without torch. Import ``engines`` from its module.
"""

from __future__ import annotations

import importlib
from typing import Any

from .mpi import (
    Moments,
    NodeLayout,
    SerialComm,
    abort_on_exception,
    block_range,
    combine_moments,
    first_ranks,
    get_comm,
    node_layout,
    node_local_rank,
    parallel_mean_var,
    rank_size,
    sleeping_barrier,
    tree_reduce,
)

# Names of the torch-importing modules, loaded on first use (tested against their __all__).
_LAZY_MODULES = {
    "halo": ("RingHaloExchange", "gpu_aware_default", "slab_bounds"),
    "fingerprint": ("FINGERPRINT_PRIME", "analysis_fingerprint"),
    "distributed": ("DistEnv", "discover_env", "expand_slurm_nodelist", "init_distributed",
                    "device_for", "is_distributed", "barrier", "all_reduce_mean", "shutdown",
                    "STRATEGIES", "FSDP_SHARDING", "parallelize", "unwrap",
                    "deepspeed_initialize"),
}
_LAZY = {name: module for module, names in _LAZY_MODULES.items() for name in names}

__all__ = ["Moments", "NodeLayout", "SerialComm", "abort_on_exception", "block_range",
           "combine_moments", "first_ranks", "get_comm", "node_layout", "node_local_rank",
           "parallel_mean_var", "rank_size", "sleeping_barrier", "tree_reduce", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
