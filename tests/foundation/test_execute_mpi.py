"""`turbda run` under mpiexec: kernels join one MPI world; a failing rank aborts the job."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ..conftest import mpiexec_path
from .test_execute import make_notebook

pytestmark = pytest.mark.mpi


def _turbda_under_mpiexec(n: int, notebook: Path, out: Path, timeout: float = 180):
    bindir = Path(sys.executable).parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(out.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run([mpiexec_path(), "-n", str(n), str(bindir / "turbda"), "run", str(notebook),
                           "--out", str(out), "-q"], capture_output=True, text=True,
                          timeout=timeout, env=env)


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


def test_one_failing_rank_aborts_instead_of_hanging(tmp_path):
    nb = make_notebook(tmp_path / "fail.ipynb",
                       "from mpi4py import MPI\nc = MPI.COMM_WORLD\n"
                       "if c.Get_rank() == 1:\n    raise RuntimeError('rank 1 broke')\n"
                       "c.allreduce(1)  # rank 0 would wait here forever without the guard")
    out = tmp_path / "run"
    proc = _turbda_under_mpiexec(2, nb, out, timeout=120)
    assert proc.returncode != 0
    record = json.loads((out / "run.json").read_text())
    assert record["status"] != "ok"
    # no kernel is left behind spinning inside the collective
    deadline = time.monotonic() + 15
    while _kernels_in(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _kernels_in(out)


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
