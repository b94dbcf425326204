"""turbda_kit.parallel exports its modules' public names; MPI-only imports stay torch-free."""

from __future__ import annotations

import importlib
import subprocess
import sys

import turbda_kit.parallel as parallel


def test_every_public_name_is_exported():
    for module in ("mpi", "halo", "fingerprint", "distributed"):
        names = importlib.import_module(f"turbda_kit.parallel.{module}").__all__
        for name in names:
            assert name in parallel.__all__, (module, name)
            assert getattr(parallel, name) is getattr(
                importlib.import_module(f"turbda_kit.parallel.{module}"), name)
    assert len(set(parallel.__all__)) == len(parallel.__all__)


def test_mpi_helpers_import_without_torch():
    code = ("import sys; from turbda_kit.parallel import get_comm, sleeping_barrier; "
            "import turbda_kit.parallel.mpi; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"
