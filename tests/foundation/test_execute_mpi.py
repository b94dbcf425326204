"""`turbda run` under mpiexec: kernels join one MPI world; a failing or killed rank ends the
job quickly and leaves its error on stderr, in its notebook or log, and in run.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from ..conftest import mpiexec_path
from .test_execute import make_notebook

pytestmark = pytest.mark.mpi

REPO = Path(__file__).resolve().parents[2]


def _command(n: int, notebook: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    bindir = Path(sys.executable).parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(out.parent), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    return ([mpiexec_path(), "-n", str(n), sys.executable, "-m", "turbda_kit", "run",
             str(notebook), "--out", str(out), "-q"], env)


def _turbda_under_mpiexec(n: int, notebook: Path, out: Path, timeout: float = 180):
    cmd, env = _command(n, notebook, out)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_kernels_of_all_ranks_share_one_mpi_world(tmp_path):
    nb = make_notebook(tmp_path / "mpi.ipynb",
                       "from mpi4py import MPI\nfrom pathlib import Path\nc = MPI.COMM_WORLD\n"
                       "total = c.allreduce(c.Get_rank() + 1)\n"
                       "Path(out_dir, f'rank{c.Get_rank()}.txt').write_text(f'{c.Get_size()} {total}')")
    out = tmp_path / "run"
    proc = _turbda_under_mpiexec(2, nb, out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "rank0.txt").read_text() == "2 3" and (out / "rank1.txt").read_text() == "2 3"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2 and record["rank"] == 0
    # rank 0 writes the notebook and run.json; other ranks only logs
    assert (out / "mpi.ipynb").exists()
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["rank1.ipynb", "rank1.log"]
    assert "without encryption" not in proc.stderr and "Executing Cell" not in proc.stdout


def test_failing_rank_reports_records_and_aborts(tmp_path):
    nb = make_notebook(tmp_path / "fail.ipynb",
                       "from mpi4py import MPI\nc = MPI.COMM_WORLD\n"
                       "if c.Get_rank() == 1:\n    raise RuntimeError('rank 1 broke')\n"
                       "c.allreduce(1)  # rank 0 would wait here forever without the guard")
    out = tmp_path / "run"
    start = time.monotonic()
    proc = _turbda_under_mpiexec(2, nb, out, timeout=120)
    assert proc.returncode != 0
    # the traceback reaches the job's stderr, with its rank
    assert "[rank 1] RuntimeError: rank 1 broke" in proc.stderr, proc.stderr
    assert "[rank 1] Traceback" in proc.stderr
    # run.json says what happened, not "running"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["failed_rank"] == 1
    assert record["error"] == "rank 1: RuntimeError: rank 1 broke"
    assert "raise RuntimeError('rank 1 broke')" in record["traceback"]
    # the failing rank's executed notebook keeps the traceback, its log too
    executed = nbformat.read(out / "logs" / "rank1.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors and errors[0].evalue == "rank 1 broke"
    assert "[rank 1] RuntimeError: rank 1 broke" in (out / "logs" / "rank1.log").read_text()
    # the job ended in seconds, and no kernel is left behind spinning inside the collective
    deadline = time.monotonic() + 15
    while _kernels_in(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _kernels_in(out)
    assert time.monotonic() - start < 90  # about 6 s here: kernel start-up, not the abort


@pytest.mark.parametrize("victim", ["turbda run of rank 1", "kernel of rank 1"])
def test_killed_rank_leaves_a_failed_record(tmp_path, victim):
    nb = make_notebook(tmp_path / "sleep.ipynb",
                       "import os, time\nfrom pathlib import Path\nfrom mpi4py import MPI\n"
                       "c = MPI.COMM_WORLD\n"
                       "Path(out_dir, f'pid{c.Get_rank()}').write_text(str(os.getpid()))\n"
                       "time.sleep(120)\nc.allreduce(1)")
    out = tmp_path / "run"
    cmd, env = _command(2, nb, out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "pid1").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        kernel = int((out / "pid1").read_text())
        target = psutil.Process(kernel).ppid() if victim.startswith("turbda run") else kernel
        killed_at = time.monotonic()
        os.kill(target, signal.SIGKILL)
        proc.communicate(timeout=60)
        assert time.monotonic() - killed_at < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    deadline = time.monotonic() + 10  # the watcher of rank 0 may still be writing
    while json.loads((out / "run.json").read_text())["status"] == "running" and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["end_utc"], record
    assert "killed" in record["error"] or "kernel died" in record["error"], record["error"]


def _kernels_in(run_dir: Path) -> list[int]:
    """Kernel processes working in ``run_dir`` (papermill starts them there)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel_launcher" in " ".join(proc.info["cmdline"] or []) and \
                    Path(proc.cwd()) == run_dir.resolve():
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found
