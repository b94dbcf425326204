"""The C transposed copy of complex arrays (turbda_kit.native): torch's bits, or nothing."""

from __future__ import annotations

import pytest
import torch

from turbda_kit import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: torch copies")

DTYPES = [torch.complex64, torch.complex128]


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 8), (17, 29), (2, 3, 64, 96),
                                   (4, 33, 7)])
def test_transpose_copy_equals_torch_for_any_size(shape, dtype):
    """Whole 8 x 8 tiles, register blocks and the scalar edges: a plain copy."""
    src = _random(shape, dtype, 1)
    dst = torch.zeros((*shape[:-2], shape[-1], shape[-2]), dtype=dtype)
    assert native.transpose_copy_(dst, src)
    assert torch.equal(dst, src.transpose(-1, -2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_copy_between_strided_views_leaves_the_rest_alone(dtype):
    """The SQG Jacobian's layouts: a column slice of a fresh array into the first columns
    of a wider buffer; nothing outside the destination view is written."""
    base = _random((2, 4, 12, 41), dtype, 2)
    src = base[..., 5:30]                         # (2, 4, 12, 25), row stride 41
    buffer = torch.full((2, 4, 25, 19), 7.0 + 1.0j, dtype=dtype)
    dst = buffer[..., :12]
    assert native.transpose_copy_(dst, src)
    assert torch.equal(dst, src.transpose(-1, -2))
    assert torch.equal(buffer[..., 12:], torch.full((2, 4, 25, 7), 7.0 + 1.0j, dtype=dtype))


def test_transpose_copy_refuses_what_it_cannot_copy():
    """False and nothing written for other dtypes, devices' layouts or shapes."""
    src = _random((6, 10), torch.complex64, 3)
    dst = torch.zeros((10, 6), dtype=torch.complex64)
    untouched = dst.clone()
    assert not native.transpose_copy_(dst, src.to(torch.complex128))      # dtypes differ
    assert not native.transpose_copy_(dst.real.contiguous(), src.real.contiguous())  # real
    assert not native.transpose_copy_(torch.zeros((6, 10), dtype=torch.complex64), src)
    assert not native.transpose_copy_(dst, _random((10, 6), torch.complex64, 4).t())  # stride
    batch = _random((3, 4, 6, 10), torch.complex64, 5).transpose(0, 1)  # no flat batch
    assert not native.transpose_copy_(torch.zeros((4, 3, 10, 6), dtype=torch.complex64), batch)
    assert torch.equal(dst, untouched)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prepared_copy_equals_torch_and_refuses_other_layouts(dtype):
    """TransposeCopy: built once for a layout, then a plain copy per call; a source of
    another layout is refused (False, nothing written); an impossible one at build."""
    dst = torch.zeros((3, 20, 9), dtype=dtype)
    like = torch.zeros((3, 9, 33), dtype=dtype)[..., 4:24]
    copy = native.TransposeCopy(dst, like)
    for seed in (6, 7):
        src = _random((3, 9, 33), dtype, seed)[..., 4:24]
        assert copy(src)
        assert torch.equal(dst, src.transpose(-1, -2))
    before = dst.clone()
    assert not copy(_random((3, 9, 20), dtype, 8))                   # other strides
    assert torch.equal(dst, before)
    with pytest.raises(ValueError, match="copy_"):
        native.TransposeCopy(dst, torch.zeros((3, 9, 20), dtype=torch.float32))


def test_copy_benchmark_runs_and_checks_the_bits(capsys):
    """benchmarks/bench_sqg_copies.py at its smallest: both sides timed, bits compared."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sqg_copies.py"
    spec = importlib.util.spec_from_file_location("bench_sqg_copies", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main(["--sizes", "16", "--calls", "2", "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-1] == "ratio" and len(lines) == 2 + 4   # 2 dtypes x 2 copies
    for line in lines[2:]:
        torch_us, c_us, checked_us, ratio = map(float, line.split()[-4:])
        assert min(torch_us, c_us, checked_us) > 0
        assert ratio == pytest.approx(torch_us / c_us, rel=0.05, abs=0.01)
