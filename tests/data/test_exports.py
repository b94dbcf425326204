"""turbda_kit.data exports its public names; preprocessing ranks never import torch."""

from __future__ import annotations

import subprocess
import sys

import turbda_kit.data as data


def test_every_modules_public_names_are_exported():
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(data.__path__):
        names = getattr(importlib.import_module(f"turbda_kit.data.{module.name}"), "__all__", [])
        assert set(names) <= set(data.__all__), (module.name, set(names) - set(data.__all__))


def test_every_exported_name_resolves():
    for name in data.__all__:
        assert getattr(data, name) is not None, name
    assert callable(data.preprocess) and data.preprocess.__module__ == "turbda_kit.data.preprocess"
    from turbda_kit.data.datasets import TrajectoryPairs
    from turbda_kit.surrogate.rollout import TrajectoryPairs as FromRollout

    assert data.TrajectoryPairs is TrajectoryPairs is FromRollout


def test_preprocessing_starts_without_torch_or_xarray():
    code = ("import sys; from turbda_kit.data import inspect_nature_run, open_shards, "
            "preprocess, read_normaliser; "
            "print(sorted(m for m in ('torch', 'xarray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
