"""Execute one parameterised notebook with papermill into a run directory, with provenance.

A *run directory* holds one executed notebook (``<stem>.ipynb``), ``run.json`` (the
parameters after defaults, code and environment provenance, timing and status; see
:mod:`turbda_kit.workflow.records`) and whatever the notebook wrote into it (notebooks
receive it as the ``out_dir`` parameter).

Every check of the input (notebook, parameter names and types, run directory) happens
before anything is written. The kernel starts with ``OMP_WAIT_POLICY=PASSIVE`` unless the
user chose a policy, with plain-line progress, and with CurveZMQ transport encryption when
its kernel spec supports it.

Under a parallel launch (``mpiexec``/``srun``) every rank executes the notebook in its
own kernel, which joins the launch's MPI world; rank 0 writes the executed notebook and
``run.json``, other ranks write only ``logs/rank<N>.ipynb`` and ``logs/rank<N>.log``.
A rank whose cell fails reports, records and aborts as :mod:`turbda_kit.workflow.mpi_guard`
describes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import provenance
from ..errors import InputError
from ..io import write_json
from ..optional import require
from .environment import with_process_defaults
from .parameters import OUT_DIR_PARAMETER, check_parameters, notebook_parameters
from .records import (
    FAILED,
    OK,
    RUN_RECORD,
    RUNNING,
    merge_final,
    read_record,
    record_failure,
    start_watcher,
)

MPI_GUARD_TAG = "turbda-mpi-guard"
PLAIN_PROGRESS_VARIABLE = "TURBDA_PLAIN_PROGRESS"
# papermill's own lines around every cell; shown only with verbose=True (``turbda run -v``).
_PAPERMILL_CHATTER = ("Executing Cell", "Ending Cell", "Executing notebook with kernel",
                      "Input Notebook:", "Output Notebook:", "Working directory:")


@dataclass
class RunResult:
    """What :func:`run_notebook` did.

    Attributes
    ----------
    run_dir : Path
        The run directory.
    notebook : Path or None
        Executed notebook (None on ranks other than 0).
    status : str
        ``"ok"`` or ``"failed"``.
    wall_seconds : float
        Wall time of the execution.
    record : dict
        The content written to ``run.json`` (rank 0).
    """

    run_dir: Path
    notebook: Path | None
    status: str
    wall_seconds: float
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every cell ran without error."""
        return self.status == OK


def check_run_dir(run_dir: str | os.PathLike, allow_existing: bool = False) -> Path:
    """``run_dir`` as a Path if it can become a fresh run directory.

    Raises
    ------
    InputError
        It (or a parent) is a file, or it holds files (``logs/`` from other ranks is
        allowed) unless ``allow_existing``.
    """
    path = Path(run_dir)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise InputError(f"run directory {path}: {parent} is a file, not a directory; "
                             "give a directory path for --out")
    if not allow_existing and path.is_dir() and any(p.name != "logs" for p in path.iterdir()):
        raise InputError(f"run directory {path} is not empty: choose a new --out or remove it")
    return path


def default_run_dir(notebook: str | os.PathLike, root: str | os.PathLike = "runs") -> Path:
    """``runs/<UTC time>-<notebook stem>``; under a parallel launch the Slurm job id is used
    instead of the time so that every rank picks the same directory."""
    stem = Path(notebook).stem
    job = os.environ.get("SLURM_JOB_ID")
    if provenance.process_world_size() > 1:
        if not job:
            raise InputError("a parallel launch needs --out DIR so that all ranks agree on the "
                             "run directory")
        tag = f"job{job}"
        if os.environ.get("SLURM_STEP_ID"):
            tag += f".{os.environ['SLURM_STEP_ID']}"
    else:
        tag = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(root) / f"{tag}-{stem}"


def _with_mpi_guard(nb_path: Path, run_dir: Path, rank: int):
    """The notebook between two inserted cells: the failure hook, and a final barrier."""
    nbformat = require("nbformat", "running notebooks")
    nb = nbformat.read(nb_path, as_version=4)
    first = nbformat.v4.new_code_cell(
        "# Inserted by `turbda run` under a parallel launch: a failing rank reports its error\n"
        "# and aborts the MPI job (see turbda_kit.workflow.mpi_guard).\n"
        "from turbda_kit.workflow.mpi_guard import install as _turbda_mpi_guard\n\n"
        f"_turbda_mpi_guard({str(run_dir.resolve())!r}, {rank})")
    last = nbformat.v4.new_code_cell(
        "# Inserted by `turbda run`: ranks leave together (see turbda_kit.workflow.mpi_guard).\n"
        "from turbda_kit.workflow.mpi_guard import final_barrier as _turbda_final_barrier\n\n"
        "_turbda_final_barrier()")
    for cell in (first, last):
        cell.metadata["tags"] = [MPI_GUARD_TAG]
    nb.cells.insert(0, first)
    nb.cells.append(last)
    return nb


@contextlib.contextmanager
def _kernel_process_settings() -> Iterator[None]:
    """Start kernels with the kit's environment defaults and MPICH/Hydra's PMI socket.

    The environment gets :data:`~turbda_kit.workflow.environment.PROCESS_DEFAULTS` where
    unset and plain-line progress. Hydra hands each rank an open socket named by
    ``PMI_FD``; ``jupyter_client`` starts kernels with ``close_fds=True``, which would close
    it and leave the kernel's ``MPI_Init`` unable to join the job, so that one descriptor
    is passed on.
    """
    import jupyter_client.launcher as launcher

    original = launcher.Popen
    fd_text = os.environ.get("PMI_FD", "")
    pass_fds = (int(fd_text),) if fd_text.isdigit() else ()

    def popen(*args, **kwargs):
        env = with_process_defaults(kwargs.get("env"))
        env.setdefault(PLAIN_PROGRESS_VARIABLE, "1")
        env.pop("JPY_SESSION_NAME", None)  # a batch kernel, even when started from JupyterLab
        kwargs["env"] = env
        if pass_fds:
            kwargs["pass_fds"] = tuple(kwargs.get("pass_fds", ())) + pass_fds
        return original(*args, **kwargs)

    launcher.Popen = popen
    try:
        yield
    finally:
        launcher.Popen = original


def _kernel_config():
    """Traitlets config for the kernel manager: CurveZMQ encryption where the kernel spec
    supports it (ipykernel otherwise warns on every start that TCP is unencrypted)."""
    from traitlets.config import Config

    config = Config()
    with contextlib.suppress(ImportError):
        import zmq

        if zmq.has("curve"):
            config.KernelManager.transport_encryption = "auto"
    return config


class _DropPapermillChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PAPERMILL_CHATTER)


class _DropUnknownParameterWarnings(logging.Filter):
    """papermill's own reading of the parameters cell misses hints such as ``Literal[...]``
    or ``int | None`` and then warns "Passed unknown parameter"; the kit checked the names
    itself (:func:`~turbda_kit.workflow.parameters.check_parameters`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Passed unknown parameter")


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def _stream_handlers(verbose: bool) -> list[logging.Handler]:
    """Live cell output: stdout lines to stdout, stderr lines (logged as warnings) to stderr."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    handlers: list[logging.Handler] = [out, err]
    for h in handlers:
        h.setFormatter(logging.Formatter("%(message)s"))
        if not verbose:
            h.addFilter(_DropPapermillChatter())
    return handlers


@contextlib.contextmanager
def _papermill_logging(handlers: list[logging.Handler]) -> Iterator[None]:
    logger = logging.getLogger("papermill")
    previous_level, previous_propagate = logger.level, logger.propagate
    unknown = _DropUnknownParameterWarnings()
    logger.addFilter(unknown)
    for h in handlers:
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (pytest, a notebook) would print every line twice
    try:
        yield
    finally:
        logger.removeFilter(unknown)
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate


class _Terminated(BaseException):
    """SIGTERM arrived (Slurm cancel, or the MPI launcher killing the job)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _describe_failure(err: BaseException) -> str:
    papermill = require("papermill", "running notebooks")
    if isinstance(err, papermill.PapermillExecutionError):
        return f"{err.ename}: {err.evalue} (cell {err.exec_count})"
    if isinstance(err, _Terminated):
        return "terminated by SIGTERM (job cancelled, or another MPI rank failed)"
    name = type(err).__name__
    if "DeadKernel" in name:
        return (f"{name}: the kernel died (killed by a signal, out of memory, or the job was "
                "cancelled)")
    text = " ".join(str(err).split())
    return f"{name}: {text}" if text else name


def run_notebook(notebook: str | os.PathLike, parameters: dict[str, Any] | None = None,
                 out_dir: str | os.PathLike | None = None, log_output: bool = True,
                 kernel_name: str | None = None, extra_record: dict[str, Any] | None = None,
                 verbose: bool = False, allow_existing: bool = False) -> RunResult:
    """Execute ``notebook`` into a run directory and record ``run.json``.

    Parameters
    ----------
    notebook : path-like
        The source notebook (must have a ``parameters`` cell).
    parameters : dict, optional
        Overrides of declared parameters, checked against the cell's type hints
        (:func:`~turbda_kit.workflow.parameters.check_parameters`; command-line text is
        read as YAML there). ``out_dir`` is set to the run directory when the notebook
        declares it and the caller did not.
    out_dir : path-like, optional
        Run directory (created; must be empty if it exists). Defaults to
        :func:`default_run_dir`.
    log_output : bool
        Stream cell output to this process's stdout/stderr while running.
    kernel_name : str, optional
        Jupyter kernel; defaults to the notebook's own (``python3``).
    extra_record : dict, optional
        Added to ``run.json`` (e.g. the pipeline a stage belongs to).
    verbose : bool
        Also stream papermill's ``Executing Cell N`` / ``Ending Cell N`` lines.
    allow_existing : bool
        Run into a directory that holds files (a pipeline re-running an interrupted stage
        whose notebook resumes from its own checkpoints there).

    Returns
    -------
    RunResult
        ``status`` is ``"failed"`` if a cell raised; the executed notebook keeps the
        traceback and ``run.json`` says ``"status": "failed"``.

    Raises
    ------
    InputError
        Missing notebook, no parameters cell, unknown parameter, a value of the wrong
        type, a run directory that is a file or not empty. Raised before anything is
        written.
    """
    papermill = require("papermill", "running notebooks")
    nb_path = Path(notebook)
    declared = notebook_parameters(nb_path)
    params = check_parameters(declared, dict(parameters or {}), nb_path)
    rank = provenance.process_rank()
    # Only rank 0 requires an empty directory: the others may find its files already there.
    run_dir = check_run_dir(out_dir if out_dir is not None else default_run_dir(nb_path),
                            allow_existing or rank != 0)
    parallel = provenance.process_world_size() > 1
    if OUT_DIR_PARAMETER in declared and OUT_DIR_PARAMETER not in params:
        params[OUT_DIR_PARAMETER] = str(run_dir.resolve())

    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        executed = run_dir / nb_path.name
        log_file = None
    else:
        (run_dir / "logs").mkdir(exist_ok=True)
        executed = run_dir / "logs" / f"rank{rank}.ipynb"
        log_file = run_dir / "logs" / f"rank{rank}.log"

    effective = {name: p.default_value for name, p in declared.items()}
    effective.update(params)
    record = provenance.collect({
        "notebook": str(nb_path.resolve()),
        "executed_notebook": str(executed.resolve()),
        "run_dir": str(run_dir.resolve()),
        "parameters": effective,
        "parameters_given": params,
        "command": sys.argv,
        "status": RUNNING,
        "start_utc": provenance.utc_now(),
    })
    if extra_record:
        record.update(extra_record)
    if rank == 0:
        write_json(run_dir / RUN_RECORD, record)
        if parallel:
            start_watcher(run_dir)  # marks the record if the launcher kills this process

    start = time.monotonic()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    status, error = OK, None
    handlers = _stream_handlers(verbose) if log_output else []
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        source = _with_mpi_guard(nb_path, run_dir, rank) if parallel else str(nb_path)
        with _papermill_logging(handlers), _kernel_process_settings():
            papermill.execute_notebook(
                source, str(executed), parameters=params,
                log_output=log_output or log_file is not None, progress_bar=False,
                kernel_name=kernel_name, cwd=str(run_dir), config=_kernel_config())
    except (Exception, _Terminated) as err:  # kernel died, timeout, ...: an honest record
        status, error = FAILED, _describe_failure(err)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    wall = time.monotonic() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time of the kernel (reaped after the run) and of what it started and waited for:
    # the figure the pipelines' estimate_cpu_s come from.
    cpu = (children.ru_utime - children_before.ru_utime) + \
        (children.ru_stime - children_before.ru_stime)
    record.update(status=status, error=error, end_utc=provenance.utc_now(),
                  wall_seconds=round(wall, 3), cpu_seconds=round(cpu, 3))
    if parallel and status == FAILED:
        record.update(error=f"rank {rank}: {error}", failed_rank=rank)
    if rank == 0:
        record = merge_final(record, read_record(run_dir))
        write_json(run_dir / RUN_RECORD, record)
    elif parallel and status == FAILED:
        # This rank's kernel could not record its failure (it died): the abort that
        # follows this process's exit may kill rank 0 before it writes anything.
        record_failure(run_dir, rank, str(error))
    return RunResult(run_dir, executed if rank == 0 else None, record["status"], wall, record)
