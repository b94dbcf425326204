"""The npz writer: numpy's members byte for byte, a valid zip64 archive, correct CRCs."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
import zlib

import numpy as np
import pytest

from turbda_kit.data.npz import CRC_SOURCE, crc32, save_npz
from turbda_kit.errors import InputError


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    day = rng.standard_normal((6, 2, 128, 128)).astype(np.float32)
    return {"strided": day[2:5, 1:2], "contiguous": day[0], "scalar": np.float64(3.5),
            "empty": np.zeros((0, 3)), "fortran": np.asfortranarray(rng.random((4, 5))),
            "int": np.arange(7, dtype=np.int16), "big_endian": np.arange(5, dtype=">f8"),
            "bool": np.array([True, False])}


def test_members_equal_what_np_savez_writes(tmp_path):
    arrays = _arrays()
    save_npz(tmp_path / "fast.npz", arrays)
    np.savez(tmp_path / "numpy.npz", **{k: np.array(v, order="C") for k, v in arrays.items()})
    with zipfile.ZipFile(tmp_path / "fast.npz") as fast, \
            zipfile.ZipFile(tmp_path / "numpy.npz") as ref:
        assert fast.namelist() == ref.namelist()
        assert fast.testzip() is None  # every member's CRC checked
        for name in ref.namelist():
            assert fast.read(name) == ref.read(name), name  # header and data, byte for byte
            info = fast.getinfo(name)
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.CRC == ref.getinfo(name).CRC == zlib.crc32(ref.read(name))
            assert info.file_size == info.compress_size == ref.getinfo(name).file_size
    with np.load(tmp_path / "fast.npz") as npz:
        for key, value in arrays.items():
            assert np.array_equal(npz[key], value) and npz[key].dtype == np.asarray(value).dtype


def test_the_same_arrays_give_the_same_bytes(tmp_path):
    save_npz(tmp_path / "a.npz", _arrays())
    save_npz(tmp_path / "b.npz", _arrays())
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_a_flipped_data_byte_fails_the_crc(tmp_path):
    path = tmp_path / "a.npz"
    save_npz(path, {"x": np.arange(1000, dtype=np.float32)})
    data = bytearray(path.read_bytes())
    data[400] ^= 0x01  # inside the member's data
    path.write_bytes(bytes(data))
    with pytest.raises(zipfile.BadZipFile, match="CRC"), np.load(path) as npz:
        npz["x"]


def test_names_outside_ascii_and_empty_archives(tmp_path):
    save_npz(tmp_path / "u.npz", {"θ_0": np.ones(3)})
    with np.load(tmp_path / "u.npz") as npz:
        assert npz.files == ["θ_0"] and np.array_equal(npz["θ_0"], np.ones(3))
    save_npz(tmp_path / "e.npz", {})
    with np.load(tmp_path / "e.npz") as npz:
        assert npz.files == []


def test_other_zip_readers_accept_it(tmp_path):
    unzip = shutil.which("unzip")
    if unzip is None:
        pytest.skip("no unzip on this machine")
    save_npz(tmp_path / "a.npz", _arrays())
    proc = subprocess.run([unzip, "-t", str(tmp_path / "a.npz")], capture_output=True, text=True)
    assert proc.returncode == 0 and "No errors detected" in proc.stdout, proc.stdout


def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(InputError, match="only plain numeric"):
        save_npz(tmp_path / "object.npz", {"bad": np.array([None, 1])})
    with pytest.raises(InputError, match="empty"):
        save_npz(tmp_path / "noname.npz", {"": np.ones(2)})
    assert list(tmp_path.iterdir()) == []


def test_crc_equals_zlibs_and_continues():
    data = np.random.default_rng(1).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    assert crc32(data) == zlib.crc32(data)
    assert crc32(data[5000:], crc32(data[:5000])) == zlib.crc32(data)
    assert crc32(b"") == 0
    # zlib-ng is a declared dependency: the fast CRC must be the one in use.
    assert CRC_SOURCE == "zlib-ng"


@pytest.mark.slow
def test_members_past_4_gib(tmp_path):
    # Rows of a broadcast view: contiguous one at a time, so 4.4 GB go to disk from 4 MB.
    row = np.arange(1 << 20, dtype=np.float32)
    big = np.broadcast_to(row, (1100, row.size))
    small = np.arange(10.0)
    path = tmp_path / "big.npz"
    save_npz(path, {"big": big, "small": small})
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        assert infos["big.npy"].file_size == big.nbytes + 128 > 1 << 32
        assert infos["small.npy"].header_offset > 1 << 32
        assert archive.testzip() is None
    with np.load(path, mmap_mode=None) as npz:
        assert np.array_equal(npz["small"], small)
    unzip = shutil.which("unzip")
    if unzip is not None:
        proc = subprocess.run([unzip, "-t", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
