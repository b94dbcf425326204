"""The one memory probe of the kit: current and peak memory, resettable peaks."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from turbda_kit.memory import (
    current_memory_bytes,
    peak_memory_bytes,
    peak_memory_method,
    reset_peak_memory,
)

MIB = 2 ** 20
linux_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


@linux_proc
def test_peak_follows_a_temporary_allocation_and_resets():
    before = reset_peak_memory("cpu")
    assert before == pytest.approx(current_memory_bytes("cpu"), rel=0.05)
    block = np.ones(64 * MIB // 8)                    # 64 MiB, touched
    during = current_memory_bytes(torch.device("cpu"))
    assert during - before > 48 * MIB
    del block
    peak = peak_memory_bytes("cpu")
    assert peak - before > 48 * MIB and peak >= current_memory_bytes("cpu")
    # after a reset the freed block no longer counts (when the kernel lets us reset)
    if "reset per measurement" in peak_memory_method("cpu"):
        again = reset_peak_memory("cpu")
        assert peak_memory_bytes("cpu") - again < 16 * MIB
        assert peak_memory_bytes("cpu") < peak


def test_methods_name_what_they_measure():
    assert "VmHWM" in peak_memory_method("cpu") or "getrusage" in peak_memory_method("cpu")
    assert peak_memory_bytes("cpu") > 0 and current_memory_bytes("cpu") >= 0


@pytest.mark.gpu
def test_gpu_peak_is_the_peak_tensor_allocation():
    device = torch.device("cuda")
    before = reset_peak_memory(device)
    block = torch.ones(16 * MIB // 4, device=device)
    del block
    assert peak_memory_bytes(device) - before >= 16 * MIB
    assert current_memory_bytes(device) == before
    assert "max_memory_allocated" in peak_memory_method(device)
