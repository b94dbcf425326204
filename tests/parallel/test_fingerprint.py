"""The split-independent fingerprint of a distributed ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbda_kit.errors import InputError
from turbda_kit.parallel.fingerprint import FINGERPRINT_PRIME, analysis_fingerprint


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fingerprint_is_split_independent_and_sensitive(dtype):
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(5, 1000, generator=gen, dtype=dtype)
    prime = FINGERPRINT_PRIME
    whole = analysis_fingerprint(full, 0, 1000)
    for cuts in ([0, 500, 1000], [0, 256, 512, 768, 1000], [0, 3, 1000]):
        parts = [analysis_fingerprint(full[:, a:b], a, 1000) for a, b in zip(cuts, cuts[1:])]
        assert sum(parts) % prime == whole
    assert analysis_fingerprint(full, 0, 1000, chunk=7) == whole
    one_ulp = full.clone()
    one_ulp[2, 321] = torch.nextafter(one_ulp[2, 321], torch.tensor(np.inf, dtype=dtype))
    assert analysis_fingerprint(one_ulp, 0, 1000) != whole
    swapped = full.clone()
    swapped[:, [10, 11]] = swapped[:, [11, 10]]
    assert analysis_fingerprint(swapped, 0, 1000) != whole
    members_swapped = full[[1, 0, 2, 3, 4]]
    assert analysis_fingerprint(members_swapped, 0, 1000) != whole


def test_fingerprint_refuses_bad_shapes_and_dtypes():
    with pytest.raises(InputError, match="member, m"):
        analysis_fingerprint(torch.zeros(4), 0, 4)
    with pytest.raises(InputError, match="32- or 64-bit"):
        analysis_fingerprint(torch.zeros(2, 4, dtype=torch.float16), 0, 4)
