"""Counter-based random streams: every draw of an experiment is named by (seed, cycle, stream).

Deriving each cycle's generators from the seed and the cycle index (instead of carrying
one generator through the run) makes a resumed run draw exactly what an uninterrupted run
draws, with nothing but the cycle index to restore.
"""

from __future__ import annotations

import hashlib

import torch

# Named streams, so that adding a new kind of draw never shifts the existing ones.
STREAMS = {"obs_noise": 1, "analysis": 2, "shock": 3, "obs_network": 4, "initial": 5}


def stream_seed(seed: int, cycle: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` at ``cycle`` of an experiment seeded with ``seed``."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    digest = hashlib.blake2b(f"{seed}:{cycle}:{STREAMS[stream]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def cycle_generator(seed: int, cycle: int, stream: str, device: torch.device | str = "cpu"
                    ) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` for one stream of one cycle."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, cycle, stream))
    return gen
