"""turbda_kit — real-time data assimilation of turbulent atmosphere dynamics.

Subpackages
-----------
models       forecast models (SQG, Lorenz-96): step functions over ensemble-batched tensors
obs          observation operators, networks and noise processes
filters      EnSF, LETKF: pure analysis functions + hyperparameter dataclasses
experiments  cycling loop, coupled ViT+EnSF, scaling harness (thin drivers)
surrogate    the ViT surrogate and its trainer
parallel     MPI, torch.distributed, DeepSpeed/FSDP wrapping, ipyparallel helpers
data         nature runs, preprocessing, datasets (xarray in, xarray out)
viz          holoviews builders (xarray in, a plot out)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("turbda_kit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
