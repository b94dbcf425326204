"""Progress reporting conventions and atomic writes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr

from turbda_kit.errors import InputError
from turbda_kit.io import atomic_path, open_dataset, write_dataset, write_json
from turbda_kit.progress import PlainProgress, process_rank, progress


def test_plain_progress_prints_first_last_and_no_carriage_returns():
    stream = io.StringIO()
    for _ in progress(range(50), desc="work", every_seconds=3600, enabled=True, stream=stream):
        pass
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("work: 1/50") and lines[-1].startswith("work: 50/50")


def test_progress_silent_off_rank_zero(monkeypatch):
    monkeypatch.setenv("PMI_RANK", "1")
    assert process_rank() == 1
    stream = io.StringIO()
    assert list(progress(range(3), stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_plain_progress_postfix():
    stream = io.StringIO()
    bar = PlainProgress(2, "c", every_seconds=0, stream=stream)
    bar.set_postfix_str("rmse 1.0")
    bar.update()
    assert "[rmse 1.0]" in stream.getvalue()


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_write_dataset_round_trip(tmp_path, suffix):
    ds = xr.Dataset({"theta": (("time", "x"), np.arange(6, dtype=np.float32).reshape(2, 3))})
    path = write_dataset(ds, tmp_path / f"d{suffix}")
    back = open_dataset(path).load()
    xr.testing.assert_identical(ds, back)
    write_dataset(ds * 2, path)  # replace in place
    np.testing.assert_array_equal(open_dataset(path).theta.values, ds.theta.values * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"d{suffix}"]


def test_write_dataset_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        write_dataset(xr.Dataset(), tmp_path / "d.txt")
