"""Notebook execution: parameter cells, papermill runs with provenance, pipelines, the CLI.

Modules
-------
parameters   the ``parameters`` cell: names, type hints, defaults; checking given values
execute      one notebook into a run directory (``run_notebook``), kernel environment
records      ``run.json``: reading it and merging failures from several ranks into it
mpi_guard    what each rank's kernel does under ``mpiexec``/``srun`` when a cell fails
pipelines    named, resumable chains of notebooks (declared in ``pipelines.yaml``)
environment  environment defaults for the processes the kit starts (OpenMP wait policy)
info         the environment report of ``turbda info``
cli          the ``turbda`` command (``python -m turbda_kit``)
"""

from .environment import PROCESS_DEFAULTS, apply_process_defaults, with_process_defaults
from .execute import RunResult, default_run_dir, run_notebook
from .info import environment_report
from .parameters import (
    CommandLineText,
    NotebookParameter,
    check_parameters,
    load_parameter_file,
    notebook_parameters,
    parse_value,
)
from .pipelines import PIPELINES, Pipeline, Stage, load_pipelines, outputs_of, run_pipeline

__all__ = [
    "PIPELINES",
    "PROCESS_DEFAULTS",
    "CommandLineText",
    "NotebookParameter",
    "Pipeline",
    "RunResult",
    "Stage",
    "apply_process_defaults",
    "check_parameters",
    "default_run_dir",
    "environment_report",
    "load_parameter_file",
    "load_pipelines",
    "notebook_parameters",
    "outputs_of",
    "parse_value",
    "run_notebook",
    "run_pipeline",
    "with_process_defaults",
]
