"""Environment defaults of the processes the kit starts, and what `turbda info` says."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from turbda_kit.workflow import environment, info, run_notebook
from turbda_kit.workflow.environment import (
    apply_process_defaults,
    wait_policy_warning,
    with_process_defaults,
)

from .test_execute import make_notebook


def test_passive_unless_the_user_chose(monkeypatch):
    assert with_process_defaults({})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert with_process_defaults({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "unset" in wait_policy_warning({})
    assert "ACTIVE" in wait_policy_warning({"OMP_WAIT_POLICY": "ACTIVE"})
    assert wait_policy_warning({"OMP_WAIT_POLICY": "passive"}) is None


def test_a_default_the_kit_set_still_counts_as_unset_for_the_warning(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(environment, "_set_by_kit", set())
    apply_process_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "unset in this shell" in info.openmp_summary()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr(environment, "_set_by_kit", set())
    assert info.openmp_summary() == "OMP_WAIT_POLICY=PASSIVE"


def test_kernels_of_turbda_run_get_passive_waits(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY")
    nb = make_notebook(tmp_path / "env.ipynb", "import os, json\nfrom pathlib import Path\n"
                       "Path(out_dir, 'env.json').write_text(json.dumps({k: os.environ.get(k) "
                       "for k in ('OMP_WAIT_POLICY', 'TURBDA_PLAIN_PROGRESS')}))")
    assert run_notebook(nb, {}, tmp_path / "run", log_output=False).ok
    seen = json.loads((tmp_path / "run" / "env.json").read_text())
    assert seen == {"OMP_WAIT_POLICY": "PASSIVE", "TURBDA_PLAIN_PROGRESS": "1"}


def test_mpiexec_next_to_python_is_found_without_path(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    local = Path(sys.executable).parent / "mpiexec"
    assert info.find_mpiexec() == (str(local) if local.exists() else None)
