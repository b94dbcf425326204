"""A tiny learnable stand-in for SQG training shards (tests and benchmarks only).

Inputs are smooth random doubly periodic fields (a few low Fourier modes per variable);
the target is the input advected by a lead-time-proportional shift along x, with the two
variables mixed by a fixed 2x2 map. A ViT can learn this quickly; it also depends on the
lead time, so the lead-time embedding matters.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, IterableDataset

VARIABLES = ("sqg_0", "sqg_10000")


def smooth_fields(n_samples: int, n_vars: int, img_size: int, seed: int, modes: int = 3
                  ) -> torch.Tensor:
    """``(n_samples, n_vars, N, N)`` float32 random fields of unit-order amplitude."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.arange(img_size, dtype=torch.float64) * 2 * math.pi / img_size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    fields = torch.zeros(n_samples, n_vars, img_size, img_size, dtype=torch.float64)
    for ky in range(modes + 1):
        for kx in range(modes + 1):
            if kx == ky == 0:
                continue
            amp = torch.randn(n_samples, n_vars, 2, generator=gen, dtype=torch.float64)
            amp = amp / math.hypot(kx, ky)
            phase = kx * x + ky * y
            fields += amp[..., 0, None, None] * torch.cos(phase) + amp[..., 1, None, None] * \
                torch.sin(phase)
    return (fields / fields.std()).float()


class ShiftDataset(Dataset):
    """Map-style synthetic dataset of ``(input, target, lead_time_hours)`` samples.

    Parameters
    ----------
    n_samples, img_size : int
        Number of samples and grid size.
    seed : int
        Seeds the fields and lead times.
    lead_times : tuple of float
        Lead times (hours) cycled over the samples; the shift is ``lead / 6`` grid points.
    """

    variables = VARIABLES

    def __init__(self, n_samples: int = 16, img_size: int = 32, seed: int = 0,
                 lead_times: tuple[float, ...] = (6.0, 12.0)):
        self.inputs = smooth_fields(n_samples, 2, img_size, seed)
        self.leads = [lead_times[i % len(lead_times)] for i in range(n_samples)]
        mix = torch.tensor([[0.8, 0.2], [-0.3, 0.9]])
        self.targets = torch.stack([
            torch.einsum("vw,wyx->vyx", mix, torch.roll(x, int(lead // 6), dims=-1))
            for x, lead in zip(self.inputs, self.leads)])

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int):
        return self.inputs[i], self.targets[i], self.leads[i]


class ShiftStream(IterableDataset):
    """The same samples as :class:`ShiftDataset`, as a stream (for IterableDataset paths)."""

    variables = VARIABLES

    def __init__(self, **kwargs):
        self.data = ShiftDataset(**kwargs)

    def __iter__(self):
        for i in range(len(self.data)):
            yield self.data[i]


class ShiftRollouts(Dataset):
    """:class:`ShiftDataset` samples with ``steps`` targets: the map applied 1..steps times.

    Items are ``(input (V, N, N), targets (steps, V, N, N), lead_time_hours)``, the
    rollout item format of the trainer.
    """

    variables = VARIABLES

    def __init__(self, n_samples: int = 16, img_size: int = 32, seed: int = 0, steps: int = 2,
                 lead_times: tuple[float, ...] = (6.0, 12.0)):
        self.data = ShiftDataset(n_samples, img_size, seed, lead_times)
        mix = torch.tensor([[0.8, 0.2], [-0.3, 0.9]])
        targets = []
        for x, lead in zip(self.data.inputs, self.data.leads):
            state, sequence = x, []
            for _ in range(steps):
                state = torch.einsum("vw,wyx->vyx", mix, torch.roll(state, int(lead // 6), dims=-1))
                sequence.append(state)
            targets.append(torch.stack(sequence))
        self.targets = torch.stack(targets)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.inputs[i], self.targets[i], self.data.leads[i]
