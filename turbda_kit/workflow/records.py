"""``run.json``: the record of one notebook run, and how failures are merged into it.

Rank 0's ``turbda run`` writes the record when the run starts (``"status": "running"``) and
when it ends. Under a parallel launch a failing rank (its kernel, or its ``turbda run``
when the kernel died) writes its failure into the same record *before* the job is
aborted, because the abort may kill rank 0 before it can write anything. The first
failure recorded is kept: later writers add their end time but do not overwrite it.

When ``mpiexec`` (Hydra) ends a job because a rank died, it kills every rank's process
with SIGKILL, rank 0's ``turbda run`` included. A small watcher process in its own session
(:func:`start_watcher`) then marks a record still saying ``running`` as failed. Under
``srun`` the watcher lives in the job step and is killed with it: a ``run.json`` still
saying ``"running"`` with no ``end_utc`` then marks a run that was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..io import write_json
from ..provenance import utc_now

RUN_RECORD = "run.json"
FAILED, OK, RUNNING = "failed", "ok", "running"


def read_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run directory's ``run.json`` as a dict, or None if absent or unreadable."""
    path = Path(run_dir) / RUN_RECORD
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    return None


def merge_final(record: dict[str, Any], on_disk: dict[str, Any] | None) -> dict[str, Any]:
    """``record`` (this process's view at the end of a run) merged with the record on disk.

    A failure a rank already wrote there (it has ``failed_rank``) is kept, with this
    process's end time and wall time; this process's own different error goes under
    ``also``.
    """
    if not on_disk or on_disk.get("status") != FAILED or on_disk.get("failed_rank") is None:
        return record
    merged = dict(record)
    for key in ("error", "failed_rank", "traceback"):
        if key in on_disk:
            merged[key] = on_disk[key]
    merged["status"] = FAILED
    if record.get("status") == FAILED and record.get("failed_rank") != on_disk["failed_rank"]:
        merged["also"] = f"rank {record.get('rank', 0)}: {record['error']}"
    return merged


def record_failure(run_dir: str | os.PathLike, rank: int, error: str,
                   traceback_text: str | None = None) -> bool:
    """Write a failure of ``rank`` into ``run.json`` unless a failure is already recorded.

    Parameters
    ----------
    run_dir : path-like
        The run directory (shared by all ranks).
    rank : int
        The failing rank.
    error : str
        One line: ``"ExceptionType: message"``.
    traceback_text : str, optional
        The full traceback, kept in the record as ``traceback``.

    Returns
    -------
    bool
        True if this call wrote the failure, False if one was recorded already (or there
        is no record to update: rank 0 had not started).
    """
    record = read_record(run_dir)
    if record is None or record.get("status") == FAILED:
        return False
    record.update(status=FAILED, error=f"rank {rank}: {error}", failed_rank=rank,
                  end_utc=utc_now())
    if traceback_text:
        record["traceback"] = traceback_text
    write_json(Path(run_dir) / RUN_RECORD, record)
    return True


KILLED_MESSAGE = ("turbda run on rank 0 was killed before it finished the record (by a signal: "
                  "the launcher ended the job because another rank died, or the job was "
                  "cancelled or ran out of time)")


def watch_record(pid: int, run_dir: str | os.PathLike, poll_seconds: float = 0.5) -> None:
    """Wait until process ``pid`` ends; then mark ``run.json`` failed if it still says running.

    Returns early once the record says anything but ``running`` (the run finished)."""
    polls = 0
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:  # pid reused by another user's process: ours is gone
            break
        polls += 1
        if polls % 8 == 0 and (read_record(run_dir) or {}).get("status") != RUNNING:
            return
        time.sleep(poll_seconds)
    record = read_record(run_dir)
    if record is not None and record.get("status") == RUNNING:
        record.update(status=FAILED, error=KILLED_MESSAGE, failed_rank=record.get("rank", 0),
                      end_utc=utc_now())
        write_json(Path(run_dir) / RUN_RECORD, record)


def start_watcher(run_dir: str | os.PathLike) -> subprocess.Popen | None:
    """Start :func:`watch_record` on this process in a new session (out of the launcher's
    process group), or return None if it cannot start."""
    code = (f"from turbda_kit.workflow.records import watch_record; "
            f"watch_record({os.getpid()}, {str(Path(run_dir).resolve())!r})")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=env, close_fds=True)
    except OSError:
        return None
