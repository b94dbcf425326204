"""ipyparallel MPI engines driven from Python (what a JupyterLab user does)."""

from __future__ import annotations

import pytest

from turbda_kit.errors import InputError
from turbda_kit.parallel.engines import launcher_command, mpi_engines, start_mpi_cluster


def _allreduce_rank():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.Get_rank(), comm.Get_size(), comm.allreduce(comm.Get_rank() + 1)


@pytest.mark.mpi
def test_two_mpi_engines_share_one_world(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    with mpi_engines(2, launcher="mpiexec", profile_dir=tmp_path / "profile") as view:
        results = view.apply_sync(_allreduce_rank)
    assert results == [(0, 2, 3), (1, 2, 3)]


def test_bad_arguments():
    with pytest.raises(InputError, match="n_engines"):
        start_mpi_cluster(0)
    with pytest.raises(InputError, match="unknown launcher"):
        launcher_command("no-such-launcher-xyz")
