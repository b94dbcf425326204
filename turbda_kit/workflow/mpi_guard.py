"""What a notebook kernel does under a parallel launch (installed by ``turbda run``).

``turbda run`` prepends one cell, ``install(run_dir, rank)``, to the notebook every rank
executes (and appends a final barrier). When a cell raises on a rank after MPI was
initialised, that rank must end the whole job (``MPI_Abort``), or the other ranks wait in
a collective until the wall-clock limit. Aborting at once would lose the error: the
kernel would die before papermill saves the cell's traceback and before ``run.json``
says anything. So the order is:

1. the traceback is shown in the cell as usual, and the cell fails; papermill saves the
   executed notebook (rank 0: ``<stem>.ipynb``, rank N: ``logs/rank<N>.ipynb``) and shuts
   the kernel down;
2. at the kernel's exit (before ``MPI_Finalize``, which would wait forever for the other
   ranks) the failing rank prints its traceback to the job's stderr, each line prefixed
   ``[rank N]``, appends it to ``logs/rank<N>.log``, writes ``"status": "failed"`` with
   the error into ``run.json`` (:func:`~turbda_kit.workflow.records.record_failure`),
   and calls ``MPI_Abort``;
3. should the kernel not be shut down within ``ABORT_AFTER_SECONDS`` (papermill stuck), a
   timer does step 2 anyway.

The kernel also asks Linux to kill it when its ``turbda run`` dies (``PR_SET_PDEATHSIG``):
a launcher cancelling the job kills ``turbda run``, and a kernel blocked inside an MPI
call could not notice by itself.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from IPython import get_ipython

from .records import record_failure

ABORT_AFTER_SECONDS = 15.0
_state: dict = {"done": False}


def _mpi():
    """The initialised, not finalised ``mpi4py.MPI`` module with several ranks, else None."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    return mpi if mpi.COMM_WORLD.Get_size() > 1 else None


def _write_stderr(text: str) -> None:
    # ipykernel redirects fd 2 into the notebook; fileno() of its stream is the saved copy
    # of the real stderr (the job's log), which is where this must go.
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = 2
    try:
        os.write(fd, text.encode(errors="replace"))
    except OSError:
        pass


def report_and_abort(run_dir: str, rank: int, error: str, traceback_text: str) -> None:
    """Print, log and record this rank's failure, then ``MPI_Abort`` (once per process)."""
    if _state["done"]:
        return
    _state["done"] = True
    prefixed = "".join(f"[rank {rank}] {line}\n" for line in traceback_text.rstrip().splitlines())
    _write_stderr(prefixed + f"[rank {rank}] aborting the MPI job (a cell failed: {error})\n")
    try:
        logs = Path(run_dir) / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"rank{rank}.log", "a") as log:
            log.write(prefixed)
        record_failure(run_dir, rank, error, traceback_text)
    except Exception as err:  # the abort below must happen whatever the file system says
        _write_stderr(f"[rank {rank}] could not record the failure: {err}\n")
    mpi = _mpi()
    if mpi is not None:
        mpi.COMM_WORLD.Abort(1)


def install(run_dir: str, rank: int) -> None:
    """Install the failure hook and the parent-death signal in this kernel."""
    shell = get_ipython()

    def on_error(shell, etype, evalue, tb, tb_offset=None):
        shell.showtraceback((etype, evalue, tb), tb_offset=tb_offset)
        if _mpi() is None or _state["done"]:
            return None
        error = "".join(traceback.format_exception_only(etype, evalue)).strip().splitlines()[-1]
        while tb is not None and f"{os.sep}IPython{os.sep}" in tb.tb_frame.f_code.co_filename:
            tb = tb.tb_next  # IPython's own frames say nothing about the error
        text = "".join(traceback.format_exception(etype, evalue, tb))
        atexit.register(report_and_abort, run_dir, rank, error, text)
        timer = threading.Timer(ABORT_AFTER_SECONDS, report_and_abort,
                                (run_dir, rank, error, text))
        timer.daemon = True
        timer.start()
        return None

    shell.set_custom_exc((Exception,), on_error)
    _die_with_parent()


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(os.environ.get("JPY_PARENT_PID", os.getppid())):
        os._exit(1)  # the parent died before the signal was armed


def final_barrier() -> None:
    """Ranks leave together, so that no kernel is shut down while waiting in
    ``MPI_Finalize`` for a slower rank."""
    mpi = _mpi()
    if mpi is not None:
        mpi.COMM_WORLD.Barrier()
