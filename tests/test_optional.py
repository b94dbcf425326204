"""The core works without the optional extras, and a missing extra is named when needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from turbda_kit.optional import EXTRAS, MissingDependency, require

# Run in a fresh interpreter where every optional package is hidden: a None entry in
# sys.modules makes `import X` fail and importlib.util.find_spec("X") return None, as for a
# package that is not installed.
_HIDE = "import sys\nfor _m in {mods!r}:\n    sys.modules[_m] = None\n"


def _run_without_extras(body: str) -> subprocess.CompletedProcess:
    hidden = sorted({m for modules in EXTRAS.values() for m in modules} | {"panel"})
    code = _HIDE.format(mods=hidden) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_the_core_imports_and_computes_without_any_extra():
    done = _run_without_extras("""
        import importlib
        import torch
        for sub in ("models", "obs", "filters", "experiments", "surrogate", "data", "parallel",
                    "testing", "report", "viz", "workflow", "metrics", "io", "baselines"):
            importlib.import_module("turbda_kit." + sub)
        from turbda_kit.experiments import build_experiment, get_preset
        preset = get_preset("bao2024_sqg_linear").replace(n_cycles=2, spinup_cycles=0, n_members=4)
        ds = build_experiment(preset, "ensf", model_overrides={"N": 16},
                              spinup_days=0.5).run(show_progress=False)
        assert ds["rmse_analysis"].size == 2 and bool(ds["rmse_analysis"].notnull().all())
        print("core ok")
    """)
    assert done.returncode == 0 and "core ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("call, extra", [
    ("from turbda_kit.viz.plots import rank_histogram; rank_histogram([1, 2, 3])", "viz"),
    ("import os; os.environ[\"PMI_SIZE\"] = \"2\"\nfrom turbda_kit.parallel.mpi import get_comm; get_comm()", "mpi"),
    ("from turbda_kit.workflow import run_notebook; run_notebook('notebooks/00_kit_check.ipynb')",
     "jupyter"),
])
def test_a_missing_extra_is_named(call, extra):
    done = _run_without_extras(call)
    assert done.returncode != 0
    assert "MissingDependency" in done.stderr and f"turbda_kit[{extra}]" in done.stderr, \
        done.stderr[-2000:]


def test_require_names_the_extra_and_passes_other_errors():
    assert require("json", "x").__name__ == "json"
    with pytest.raises(ModuleNotFoundError):  # not one of ours: the plain error
        require("no_such_module_xyz", "a test")
    saved = sys.modules.get("zarr")
    sys.modules["zarr"] = None
    try:
        with pytest.raises(MissingDependency, match=r"zarr stores needs zarr.*turbda_kit\[io\]"):
            require("zarr", "zarr stores")
    finally:
        if saved is None:
            del sys.modules["zarr"]
        else:
            sys.modules["zarr"] = saved
