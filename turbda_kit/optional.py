"""Optional dependencies: imported where needed, with a message naming the extra to install.

The kit's core (models, observation operators, filters, the cycling engine, the ViT and
its single-process trainer, xarray results) needs only torch, numpy, scipy, xarray and
PyYAML. Everything heavier is an extra of ``pip install turbda_kit[EXTRA]``:

=========== ============================================================================
``io``      netCDF4, h5netcdf, h5py, zarr, dask, zlib-ng: nature-run files, shards, stores
``viz``     holoviews, bokeh, matplotlib: plots and figures
``mpi``     mpi4py (+ the mpich wheel for a local ``mpiexec``): MPI runs
``deepspeed`` DeepSpeed: ZeRO training
``jupyter`` papermill, nbformat, jupyterlab, ipykernel, ipyparallel, jupytext, ipywidgets:
            ``turbda run`` / ``turbda pipeline`` and notebooks
``all``     all of the above; ``dev`` adds the test and documentation tools
=========== ============================================================================

:func:`require` imports a module or raises :class:`MissingDependency`, an ``ImportError``
whose message says which extra provides it and what needed it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependency", "require"]

EXTRAS = {
    "io": ("netCDF4", "h5netcdf", "h5py", "zarr", "dask", "zlib_ng"),
    "viz": ("holoviews", "bokeh", "matplotlib"),
    "mpi": ("mpi4py",),
    "deepspeed": ("deepspeed",),
    "jupyter": ("papermill", "nbformat", "jupyterlab", "ipykernel", "ipyparallel", "jupytext",
                "ipywidgets"),
}
"""Extra name → top-level modules it provides."""


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (dotted names allowed) or explain which extra to install.

    Parameters
    ----------
    module : str
        E.g. ``"zarr"``, ``"mpi4py.MPI"``, ``"dask.array"``, ``"matplotlib.ticker"``.
    purpose : str
        What needs it, for the message (``"writing zarr stores"``).

    Returns
    -------
    module

    Raises
    ------
    MissingDependency
        ``"<purpose> needs <package>, which is not installed: pip install 'turbda_kit[<extra>]'"``.

    Examples
    --------
    >>> require("json", "reading JSON").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = next((name for name, modules in EXTRAS.items() if top in modules), None)
        missing = getattr(err, "name", None) or top
        if extra is None or (missing.split(".")[0] != top and missing != module):
            raise  # not an optional dependency of ours, or a broken installation inside it
        raise MissingDependency(f"{purpose} needs {top}, which is not installed: "
                                f"pip install 'turbda_kit[{extra}]' (or turbda_kit[all])",
                                name=top) from err
