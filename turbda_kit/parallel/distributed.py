"""torch.distributed plumbing: who am I, join the group, wrap the model ("parallelize").

Three launchers are recognised, in this order:

* ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``);
* Slurm ``srun`` (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``; the rendezvous
  host is the first node of ``SLURM_STEP_NODELIST``/``SLURM_JOB_NODELIST``, expanded with
  ``scontrol show hostnames`` or, without it, by :func:`expand_slurm_nodelist`);
* MPI (``mpiexec``: MPICH/Hydra ``PMI_RANK``/``PMI_SIZE``/``MPI_LOCALRANKID``, Open MPI
  ``OMPI_COMM_WORLD_*``, PMIx ``PMIX_RANK``); the rendezvous host and a free port are
  broadcast from rank 0 with mpi4py when ``MASTER_ADDR`` is not set.

The model stays a plain ``nn.Module``; :func:`parallelize` applies, torchtitan style,
activation checkpointing, ``torch.compile`` and then DDP or FSDP. DeepSpeed wraps model and
optimiser together in :func:`deepspeed_initialize`.

FSDP choice: FSDP1 (``FullyShardedDataParallel``) because it offers FULL_SHARD,
SHARD_GRAD_OP and HYBRID_SHARD by name on CPU (gloo) and GPU alike; each transformer block
is one shard unit.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..device import resolve_device
from ..errors import InputError
from ..optional import require

__all__ = ["DistEnv", "discover_env", "expand_slurm_nodelist", "init_distributed",
           "device_for", "is_distributed", "barrier", "all_reduce_mean", "shutdown",
           "STRATEGIES", "FSDP_SHARDING", "parallelize", "unwrap", "deepspeed_initialize"]

STRATEGIES = ("none", "ddp", "fsdp", "deepspeed")
"""Distribution strategies the trainer accepts."""

FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")
"""FSDP1 sharding strategies accepted by name."""

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a parallel launch.

    Attributes
    ----------
    rank, world_size : int
        Global rank and number of processes.
    local_rank, local_world_size : int
        Rank among, and number of, the processes on this node (GPU choice, HYBRID_SHARD).
    master_addr : str or None
        Rendezvous host (None until resolved, for a single process).
    master_port : int or None
        Rendezvous TCP port.
    launcher : str
        ``"torchrun"``, ``"slurm"``, ``"mpi"`` or ``"single"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that logs and writes shared files)."""
        return self.rank == 0


def _int(environ: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p]


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm host list such as ``"frontier[00012-00014,00020],login2"``.

    Parameters
    ----------
    nodelist : str
        Compressed host list (``SLURM_JOB_NODELIST`` syntax: comma-separated hosts, bracket
        ranges ``[a-b,c]`` keeping zero padding, several bracket groups per host allowed).

    Returns
    -------
    list of str
        Host names in order.

    Examples
    --------
    >>> expand_slurm_nodelist("node[01-03,07],gpu1")
    ['node01', 'node02', 'node03', 'node07', 'gpu1']
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        match = re.search(r"\[([^\]]*)\]", item)
        if match is None:
            hosts.append(item)
            continue
        head, tail = item[:match.start()], item[match.end():]
        for piece in match.group(1).split(","):
            if "-" in piece:
                lo, hi = piece.split("-", 1)
                width = len(lo)
                values = [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
            else:
                values = [piece]
            for value in values:
                hosts.extend(expand_slurm_nodelist(head + value + tail))
    return hosts


def _slurm_first_host(nodelist: str) -> str:
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                 text=True, timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return expand_slurm_nodelist(nodelist)[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def discover_env(environ: Mapping[str, str] | None = None, use_mpi: bool = True) -> DistEnv:
    """Rank, world size and rendezvous address of this process, from its launcher.

    Parameters
    ----------
    environ : mapping, optional
        Environment to read (default ``os.environ``); pass a dict to test.
    use_mpi : bool
        Under an MPI launch without ``MASTER_ADDR``, broadcast rank 0's host name and a free
        port with mpi4py (a collective: every rank must call this). When False, fall back
        to ``127.0.0.1:29500`` (single node only).

    Returns
    -------
    DistEnv
    """
    env = os.environ if environ is None else environ
    addr = env.get("MASTER_ADDR") or None
    port = _int(env, "MASTER_PORT")

    if _int(env, "RANK") is not None and _int(env, "WORLD_SIZE") is not None:
        world = _int(env, "WORLD_SIZE")
        return DistEnv(rank=_int(env, "RANK"), world_size=world,
                       local_rank=_int(env, "LOCAL_RANK") or 0,
                       local_world_size=_int(env, "LOCAL_WORLD_SIZE") or world,
                       master_addr=addr or "127.0.0.1", master_port=port or DEFAULT_PORT,
                       launcher="torchrun")

    slurm_world = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    if _int(env, "SLURM_PROCID") is not None and slurm_world is not None:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        if addr is None:
            addr = _slurm_first_host(nodelist) if nodelist else "127.0.0.1"
        if port is None:
            # Derived from the job id so that concurrent jobs on shared nodes do not clash.
            port = 20000 + (_int(env, "SLURM_JOB_ID") or 0) % 20000
        n_nodes = _int(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES") or 1
        local_world = _int(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")
        return DistEnv(rank=_int(env, "SLURM_PROCID"), world_size=slurm_world,
                       local_rank=_int(env, "SLURM_LOCALID") or 0,
                       local_world_size=local_world or max(slurm_world // n_nodes, 1),
                       master_addr=addr, master_port=port, launcher="slurm")

    mpi_rank = _int(env, "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
    mpi_world = _int(env, "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    if mpi_rank is not None and mpi_world is not None:
        local_rank = _int(env, "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PALS_LOCAL_RANKID")
        local_world = _int(env, "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
        if (addr is None or port is None) and use_mpi and mpi_world > 1:
            MPI = require("mpi4py.MPI", "reading the MPI launch")
            comm = MPI.COMM_WORLD
            proposal = (socket.gethostname(), _free_port()) if comm.Get_rank() == 0 else None
            host, free = comm.bcast(proposal, root=0)
            addr, port = addr or host, port or free
        return DistEnv(rank=mpi_rank, world_size=mpi_world,
                       local_rank=local_rank if local_rank is not None else mpi_rank,
                       local_world_size=local_world or mpi_world,
                       master_addr=addr or "127.0.0.1", master_port=port or DEFAULT_PORT,
                       launcher="mpi")

    return DistEnv(master_addr=addr, master_port=port)


def device_for(env: DistEnv) -> torch.device:
    """This rank's device: GPU ``local_rank`` (mod the visible count) when one exists, else CPU."""
    return resolve_device("auto", local_rank=env.local_rank)


def is_distributed() -> bool:
    """Whether a torch.distributed process group is up."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(env: DistEnv, backend: str | None = None,
                     timeout: datetime.timedelta = datetime.timedelta(minutes=10)) -> None:
    """Join the default process group described by ``env`` (no-op when already joined).

    Parameters
    ----------
    env : DistEnv
        From :func:`discover_env`.
    backend : str, optional
        ``"nccl"`` on GPUs (RCCL on ROCm), ``"gloo"`` on CPU by default.
    timeout : datetime.timedelta
        Collective timeout.

    Notes
    -----
    Exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` so that
    libraries reading them (DeepSpeed) agree with the group.
    """
    if is_distributed():
        return
    if env.master_addr is None or env.master_port is None:
        # A single process (e.g. DDP/DeepSpeed code paths run with one rank): local rendezvous.
        env = DistEnv(rank=env.rank, world_size=env.world_size, local_rank=env.local_rank,
                      local_world_size=env.local_world_size,
                      master_addr=env.master_addr or "127.0.0.1",
                      master_port=env.master_port or _free_port(), launcher=env.launcher)
    device = device_for(env)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size),
                      LOCAL_RANK=str(env.local_rank),
                      LOCAL_WORLD_SIZE=str(env.local_world_size),
                      MASTER_ADDR=str(env.master_addr), MASTER_PORT=str(env.master_port))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                            rank=env.rank, world_size=env.world_size, timeout=timeout)


def shutdown() -> None:
    """Leave the process group (call once at the end of a driver)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Synchronise all ranks (no-op for a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (returned new; unchanged for a single process)."""
    if not is_distributed():
        return values.clone()
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / FSDP / DeepSpeed / compile wrappers."""
    inner = model
    for attr in ("module", "_orig_mod", "_fsdp_wrapped_module"):
        while hasattr(inner, attr) and isinstance(getattr(inner, attr), nn.Module):
            inner = getattr(inner, attr)
    return inner


def parallelize(model: nn.Module, strategy: str, *, device: torch.device,
                env: DistEnv | None = None, sharding: str = "FULL_SHARD",
                param_dtype: torch.dtype | None = None, block_types: tuple[type, ...] = (),
                activation_checkpointing: bool = False, compile: bool = False) -> nn.Module:
    """Apply activation checkpointing, compilation, then data parallelism.

    Parameters
    ----------
    model : nn.Module
        The plain model, already on ``device``.
    strategy : {"none", "ddp", "fsdp", "deepspeed"}
        ``"deepspeed"`` only applies checkpointing/compile here; see
        :func:`deepspeed_initialize`.
    device : torch.device
        This rank's device.
    env : DistEnv, optional
        Needed for ``HYBRID_SHARD`` (node layout).
    sharding : str
        FSDP sharding strategy name (see :data:`FSDP_SHARDING`).
    param_dtype : torch.dtype, optional
        FSDP mixed precision: parameters, gradient reduction and buffers in this dtype
        (e.g. ``torch.bfloat16``); None keeps fp32.
    block_types : tuple of type
        Module classes that form one FSDP unit / one checkpointed region (transformer blocks).
    activation_checkpointing : bool
        Recompute block activations during backward.
    compile : bool
        ``torch.compile`` each block in place (state-dict keys unchanged).

    Returns
    -------
    nn.Module
        The wrapped model.
    """
    check_strategy(strategy, sharding)
    blocks = [m for m in model.modules() if block_types and isinstance(m, block_types)]
    if compile:
        for block in blocks or [model]:
            block.compile()
    if activation_checkpointing and strategy != "fsdp":
        if not hasattr(model, "activation_checkpointing"):
            raise InputError(f"{type(model).__name__} has no 'activation_checkpointing' switch")
        model.activation_checkpointing = True
    if strategy in ("none", "deepspeed"):
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    mesh = None
    if sharding == "HYBRID_SHARD":
        from torch.distributed.device_mesh import init_device_mesh

        env = env or discover_env()
        local = env.local_world_size
        if env.world_size % local:
            raise InputError(f"HYBRID_SHARD needs world_size={env.world_size} to be a multiple "
                             f"of the ranks per node ({local})")
        mesh = init_device_mesh(device.type, (env.world_size // local, local),
                                mesh_dim_names=("replicate", "shard"))
    precision = None
    if param_dtype is not None and param_dtype != torch.float32:
        precision = MixedPrecision(param_dtype=param_dtype, reduce_dtype=param_dtype,
                                   buffer_dtype=param_dtype)
    wrapped = FullyShardedDataParallel(
        model, sharding_strategy=ShardingStrategy[sharding],
        auto_wrap_policy=ModuleWrapPolicy(set(block_types)) if block_types else None,
        mixed_precision=precision, device_id=device, use_orig_params=True, device_mesh=mesh)
    if activation_checkpointing:
        # Inside each FSDP unit (recommended order for FSDP1): checkpoint the block itself.
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl,
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )

        apply_activation_checkpointing(
            wrapped, check_fn=lambda m: isinstance(m, block_types),
            checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(
                m, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    return wrapped


def check_strategy(strategy: str, sharding: str = "FULL_SHARD", zero_stage: int = 1) -> None:
    """Raise :class:`InputError` for an unknown strategy, sharding name or ZeRO stage."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy={strategy!r}: choose one of {STRATEGIES}")
    if strategy == "fsdp" and sharding not in FSDP_SHARDING:
        raise InputError(f"unknown FSDP sharding={sharding!r}: choose one of {FSDP_SHARDING}")
    if strategy == "deepspeed" and (isinstance(zero_stage, bool) or zero_stage not in (0, 1, 2, 3)):
        raise InputError(f"zero_stage={zero_stage!r} is out of range: use 0, 1, 2 or 3")


def _prepare_deepspeed_on_cpu() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed = require("deepspeed", "DeepSpeed training")
    # The shared-memory all-reduce op is compiled at first use (minutes); gloo is enough.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_initialize(model: nn.Module, optimizer: torch.optim.Optimizer,
                         lr_scheduler: Any, config: dict[str, Any]) -> Any:
    """Wrap model, client optimiser and scheduler in a DeepSpeed engine.

    Parameters
    ----------
    model : nn.Module
        Plain model on this rank's device.
    optimizer : torch.optim.Optimizer
        Client optimiser (a torch AdamW: no FusedAdam/CPUAdam compile).
    lr_scheduler : torch.optim.lr_scheduler.LRScheduler
        Stepped by the engine at each optimiser step and saved in its checkpoints.
    config : dict
        DeepSpeed JSON config (see ``turbda_kit/configs/ds_config.json``).

    Returns
    -------
    deepspeed.DeepSpeedEngine
    """
    if not torch.cuda.is_available():
        _prepare_deepspeed_on_cpu()
    deepspeed = require("deepspeed", "DeepSpeed training")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                               lr_scheduler=lr_scheduler, config=config,
                                               dist_init_required=not is_distributed())
    return engine
