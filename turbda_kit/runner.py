"""Execute parameterised notebooks with papermill, with provenance and clean failures.

A *run directory* holds one executed notebook (``<stem>.ipynb``), ``run.json`` (the
parameters after defaults, code and environment provenance, timing and status) and
whatever the notebook wrote into it (notebooks receive it as the ``out_dir`` parameter).

Under a parallel launch (``mpiexec``/``srun``) every rank executes the notebook in its
own kernel, which joins the launch's MPI world; rank 0 writes the executed notebook and
``run.json``, other ranks write only ``logs/rank<N>.ipynb`` and ``logs/rank<N>.log``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import provenance
from .errors import InputError
from .io import write_json

OUT_DIR_PARAMETER = "out_dir"


@dataclass(frozen=True)
class NotebookParameter:
    """One entry of a notebook's ``parameters`` cell.

    Attributes
    ----------
    name : str
        Variable name.
    type_name : str
        Type papermill inferred from the default (``int``, ``float``, ``str``, ...).
    default : str
        The default as written in the cell (Python source).
    help : str
        The comment after the assignment.
    """

    name: str
    type_name: str
    default: str
    help: str


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
        return self.status == "ok"


def notebook_parameters(path: str | os.PathLike) -> dict[str, NotebookParameter]:
    """The parameters a notebook declares in its cell tagged ``parameters``.

    Parameters
    ----------
    path : path-like
        An ``.ipynb`` file.

    Returns
    -------
    dict of str to NotebookParameter

    Raises
    ------
    InputError
        If the file is missing, not a notebook, or has no ``parameters`` cell.
    """
    import nbformat

    nb_path = Path(path)
    if not nb_path.is_file():
        raise InputError(f"notebook not found: {nb_path} (give the path to an existing .ipynb file)")
    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception as err:  # nbformat raises several unrelated types
        raise InputError(f"{nb_path} is not a readable Jupyter notebook: {err}") from err
    if not any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in nb.cells):
        raise InputError(f"{nb_path} has no cell tagged 'parameters': tag the cell holding the "
                         "defaults with 'parameters' (View > Cell Toolbar > Tags in Jupyter)")
    from papermill.inspection import inspect_notebook

    found = inspect_notebook(str(nb_path))
    return {name: NotebookParameter(name, str(p["inferred_type_name"]), str(p["default"]),
                                    str(p["help"]))
            for name, p in found.items()}


def _yaml_floats(value: Any) -> Any:
    # YAML 1.1 reads "1e-3" or "1.5e6" as strings; numbers written that way are floats.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
        return value
    if isinstance(value, list):
        return [_yaml_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_floats(v) for k, v in value.items()}
    return value


def parse_value(text: str) -> Any:
    """Parse a command-line parameter value as YAML: a scalar, a list or a mapping.

    ``"3"`` → 3, ``"1e-3"`` → 0.001, ``"true"`` → True, ``"[1, 2]"`` → [1, 2],
    ``"{radius: 1.5e6}"`` → {"radius": 1500000.0} (for ``dict`` parameters such as
    ``letkf_settings``), ``"abc"`` → "abc". Strings that read as numbers in exponent
    notation become floats, also inside lists and mappings.

    Raises
    ------
    InputError
        If the text is not valid YAML.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise InputError(f"cannot parse value {text!r}: write a number, true/false, a string, "
                         f"a list like [1, 2] or a mapping like {{a: 1}} ({first})") from err
    return _yaml_floats(value)


def load_parameter_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file of ``name: value`` parameters."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"parameter file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"parameter file {p} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise InputError(f"parameter file {p} must hold a mapping of name: value")
    return data


def _literal(source: str) -> Any:
    """A parameter default as a Python value when it is a literal, else its source text."""
    import ast

    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


def check_parameters(declared: dict[str, NotebookParameter], given: dict[str, Any],
                     notebook: str | os.PathLike) -> None:
    """Refuse parameter names the notebook does not declare, listing the valid ones."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        valid = ", ".join(sorted(declared)) or "(none)"
        raise InputError(f"unknown parameter(s) {', '.join(unknown)} for {Path(notebook).name}; "
                         f"valid names: {valid}")


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


MPI_GUARD_TAG = "turbda-mpi-guard"
_MPI_GUARD_SOURCE = '''\
# Inserted by `turbda run` under a parallel launch: if a cell raises on this rank after MPI
# was initialised, abort the whole MPI job instead of leaving the other ranks waiting forever
# in a collective.
def _turbda_abort_on_error(shell, etype, evalue, tb, tb_offset=None):
    import sys
    shell.showtraceback((etype, evalue, tb), tb_offset=tb_offset)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        sys.stdout.flush()
        sys.stderr.flush()
        mpi.COMM_WORLD.Abort(1)


get_ipython().set_custom_exc((Exception,), _turbda_abort_on_error)


# If the launcher kills this rank's `turbda run` (another rank failed, or the job was
# cancelled), take this kernel down too: it may be blocked inside an MPI call, where no
# Python-level watchdog can run.
def _turbda_die_with_parent():
    import ctypes
    import os
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(os.environ.get("JPY_PARENT_PID", os.getppid())):
        os._exit(1)


_turbda_die_with_parent()'''

_MPI_FINAL_BARRIER_SOURCE = '''\
# Inserted by `turbda run` under a parallel launch: ranks leave together, so that no
# kernel is shut down while waiting in MPI_Finalize for a slower rank.
import sys as _sys
_mpi = _sys.modules.get("mpi4py.MPI")
if _mpi is not None and _mpi.Is_initialized() and not _mpi.Is_finalized():
    _mpi.COMM_WORLD.Barrier()'''


def _with_mpi_guard(nb_path: Path):
    """The notebook between two guard cells: errors become ``MPI_Abort``; ranks end together."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    cell = nbformat.v4.new_code_cell(_MPI_GUARD_SOURCE)
    cell.metadata["tags"] = [MPI_GUARD_TAG]
    nb.cells.insert(0, cell)
    final = nbformat.v4.new_code_cell(_MPI_FINAL_BARRIER_SOURCE)
    final.metadata["tags"] = [MPI_GUARD_TAG]
    nb.cells.append(final)
    return nb


@contextlib.contextmanager
def _kernel_inherits_pmi_fd():
    """Let the papermill kernel inherit MPICH/Hydra's PMI socket.

    Hydra hands each rank an open socket named by ``PMI_FD``; ``jupyter_client`` starts
    kernels with ``close_fds=True``, which would close it and leave the kernel's
    ``MPI_Init`` unable to join the job. Only that one descriptor is passed on.
    """
    fd_text = os.environ.get("PMI_FD")
    if not fd_text or not fd_text.isdigit():
        yield
        return
    import jupyter_client.launcher as launcher

    fd = int(fd_text)
    original = launcher.Popen
    launcher.Popen = functools.partial(original, pass_fds=(fd,))
    try:
        yield
    finally:
        launcher.Popen = original


def _stream_papermill_log() -> logging.Handler:
    """Send papermill's live cell output (logged at INFO) to this process's stdout."""
    logger = logging.getLogger("papermill")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


class _Terminated(BaseException):
    """SIGTERM arrived (Slurm cancel, or the MPI launcher killing the job)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def run_notebook(notebook: str | os.PathLike, parameters: dict[str, Any] | None = None,
                 out_dir: str | os.PathLike | None = None, log_output: bool = True,
                 kernel_name: str | None = None, extra_record: dict[str, Any] | None = None
                 ) -> RunResult:
    """Execute ``notebook`` into a run directory and record ``run.json``.

    Parameters
    ----------
    notebook : path-like
        The source notebook (must have a ``parameters`` cell).
    parameters : dict, optional
        Overrides of declared parameters. ``out_dir`` is set to the run directory when the
        notebook declares it and the caller did not.
    out_dir : path-like, optional
        Run directory (created; must be empty if it exists). Defaults to
        :func:`default_run_dir`.
    log_output : bool
        Stream cell output to this process's stdout while running.
    kernel_name : str, optional
        Jupyter kernel; defaults to the notebook's own (``python3``).
    extra_record : dict, optional
        Added to ``run.json`` (e.g. the pipeline a stage belongs to).

    Returns
    -------
    RunResult
        ``status`` is ``"failed"`` if a cell raised; the executed notebook keeps the
        traceback and ``run.json`` says ``"status": "failed"``.

    Raises
    ------
    InputError
        Missing notebook, no parameters cell, unknown parameter, non-empty run directory.
        Raised before anything is written.
    """
    import papermill

    nb_path = Path(notebook)
    declared = notebook_parameters(nb_path)
    params = dict(parameters or {})
    check_parameters(declared, params, nb_path)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(nb_path)
    rank = provenance.process_rank()
    if rank == 0 and run_dir.exists() and any(p.name != "logs" for p in run_dir.iterdir()):
        raise InputError(f"run directory {run_dir} is not empty: choose a new --out or remove it")
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

    effective = {name: _literal(p.default) for name, p in declared.items()}
    effective.update({k: v for k, v in params.items()})
    record = provenance.collect({
        "notebook": str(nb_path.resolve()),
        "executed_notebook": str(executed.resolve()),
        "run_dir": str(run_dir.resolve()),
        "parameters": effective,
        "parameters_given": params,
        "command": sys.argv,
        "status": "running",
        "start_utc": provenance.utc_now(),
    })
    if extra_record:
        record.update(extra_record)
    if rank == 0:
        write_json(run_dir / "run.json", record)

    start = time.monotonic()
    status, error = "ok", None
    handler = None
    live = _stream_papermill_log() if log_output else None
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    if log_file is not None:
        handler = logging.FileHandler(log_file)
        logging.getLogger("papermill").addHandler(handler)
    try:
        source = _with_mpi_guard(nb_path) if provenance.process_world_size() > 1 else str(nb_path)
        with _kernel_inherits_pmi_fd():
            papermill.execute_notebook(
                source, str(executed), parameters=params, log_output=log_output,
                progress_bar=False, kernel_name=kernel_name, cwd=str(run_dir))
    except papermill.PapermillExecutionError as err:
        status = "failed"
        error = f"{err.ename}: {err.evalue} (cell {err.exec_count})"
    except Exception as err:  # kernel died, timeout, ...: still leave an honest record
        status = "failed"
        error = f"{type(err).__name__}: {err}"
    except _Terminated:
        status = "failed"
        error = "terminated by SIGTERM (job cancelled, or another MPI rank failed)"
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        for h in (handler, live):
            if h is not None:
                logging.getLogger("papermill").removeHandler(h)
                h.close()
    wall = time.monotonic() - start
    record.update(status=status, error=error, end_utc=provenance.utc_now(),
                  wall_seconds=round(wall, 3))
    if rank == 0:
        write_json(run_dir / "run.json", record)
    return RunResult(run_dir, executed if rank == 0 else None, status, wall, record)
