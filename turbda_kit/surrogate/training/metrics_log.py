"""The metrics log: ``metrics.csv`` and TensorBoard-style ``scalars.jsonl``, rank 0 only.

``scalars.jsonl`` holds ``{"step", "tag", "value", "wall_time"}`` lines (the
``tensorboard`` package is not part of our stack; the lines convert in a few lines).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import torch

from ...io import atomic_path
from ...memory import peak_memory_bytes

__all__ = ["MetricsLog", "peak_memory_gb"]


class MetricsLog:
    """Metric rows, rewritten atomically to ``out_dir`` at every row (rank 0 only).

    Parameters
    ----------
    out_dir : Path
        Where ``metrics.csv`` and ``scalars.jsonl`` go.
    enabled : bool
        Whether this rank writes (rank 0).
    rows : list of dict
        Rows of an earlier run being resumed.
    """

    def __init__(self, out_dir: Path, enabled: bool, rows: list[dict[str, Any]]):
        self.out_dir, self.enabled, self.rows = out_dir, enabled, list(rows)
        self.scalars: list[dict[str, Any]] = []
        for row in self.rows:
            self._add_scalars(row)

    def _add_scalars(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key in ("step", "epoch", "kind", "wall_time") or value is None:
                continue
            prefix = "val" if key.startswith("val_") else "train"
            tag = f"{prefix}/{key.removeprefix('val_')}"
            self.scalars.append({"step": row["step"], "tag": tag, "value": value,
                                 "wall_time": row["wall_time"]})

    def add(self, row: dict[str, Any]) -> None:
        """Append a row (``step``, ``epoch``, ``kind`` and metrics) and rewrite the files."""
        row = {"wall_time": round(time.time(), 3), **row}
        self.rows.append(row)
        self._add_scalars(row)
        if not self.enabled:
            return
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        with atomic_path(self.out_dir / "metrics.csv") as tmp:
            with open(tmp, "w", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)
        with atomic_path(self.out_dir / "scalars.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(s) + "\n" for s in self.scalars))


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: GPU max allocated, else peak resident set (GB)."""
    return peak_memory_bytes(device) / 1e9
