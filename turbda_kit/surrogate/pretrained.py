"""Trained surrogates that ship with the kit, loadable by name, with a held-out check.

A pretrained bundle is a folder ``turbda_kit/pretrained/<name>/`` holding

================= =====================================================================
``surrogate.pt``  the export (:mod:`turbda_kit.surrogate.export`): weights (int8 with
                  float16 group scales by default, :mod:`turbda_kit.surrogate.quantize`),
                  config, normaliser, lead time; machine paths and host names removed
``heldout.npz``   ``trajectory`` (T, V, N, N) float32 K: consecutive held-out truth
                  states (test days of the training nature run), ``hours_per_step``
``manifest.json`` sha256 of both files, the RMSE of the model on the held-out sample
                  per lead (K), how it was trained (the command and its parameters, kit
                  version, git revision) and its size
================= =====================================================================

:func:`load_pretrained` checks the sha256 of what it loads, so a damaged or altered file
is refused rather than silently used; the export is read with the kit's safe loader
(nothing stored in it can run). The results pipeline makes a bundle with
:func:`package_pretrained` (``python -m turbda_kit.surrogate.pretrained package ...``);
the test suite re-scores every shipped bundle on its held-out sample
(:func:`score_heldout`) and checks the manifest's numbers.

Example
-------
>>> from turbda_kit.surrogate.pretrained import load_pretrained
>>> model = load_pretrained("sqg_64_cpu")                    # doctest: +SKIP
>>> forecast_K = model.advance(states_K, 1)                  # (member, 2, 64, 64), 12 h  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.shards import open_shards
from ..errors import InputError
from ..io import atomic_path, write_json
from ..provenance import git_revision
from .export import read_surrogate, save_surrogate
from .forecast_model import SurrogateModel
from .rollout import rollout_rmse, split_trajectory

__all__ = ["PRETRAINED_DIR", "available_pretrained", "load_pretrained", "package_pretrained",
           "pretrained_info", "score_heldout"]

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
MANIFEST = "manifest.json"
EXPORT_FILE = "surrogate.pt"
HELDOUT_FILE = "heldout.npz"
# Metadata an export may carry into a shipped bundle; everything else (paths of the
# machine that trained it, ...) stays behind.
_KEPT_METADATA = ("lead_time_hours", "hours_per_step", "step", "val_loss", "best_step")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def available_pretrained(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the bundles in ``root`` (default: the kit's ``pretrained/`` folder)."""
    folder = Path(root) if root is not None else PRETRAINED_DIR
    return sorted(p.parent.name for p in folder.glob(f"*/{MANIFEST}"))


def _bundle(name: str, root: str | os.PathLike | None) -> Path:
    folder = (Path(root) if root is not None else PRETRAINED_DIR) / name
    if not (folder / MANIFEST).is_file():
        known = ", ".join(available_pretrained(root)) or "none"
        raise InputError(f"no pretrained surrogate {name!r} (known: {known}); the results "
                         "pipeline makes them (`turbda pipeline paper`)")
    return folder


def pretrained_info(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of bundle ``name``: files and hashes, held-out scores, training record."""
    path = _bundle(name, root) / MANIFEST
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a pretrained-bundle manifest ({err}): restore it "
                         "from the repository (git checkout) or rebuild the bundle") from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise InputError(f"{path} is not a pretrained-bundle manifest (no 'files')")
    return info


def _verified(name: str, root: str | os.PathLike | None, filename: str) -> Path:
    folder = _bundle(name, root)
    expected = pretrained_info(name, root)["files"].get(filename)
    path = folder / filename
    if expected is None or not path.is_file():
        raise InputError(f"pretrained bundle {name!r} lacks {filename}: restore it from the "
                         "repository (git checkout) or rebuild the bundle")
    actual = _sha256(path)
    if actual != expected:
        raise InputError(f"{path} has sha256 {actual[:16]}..., the manifest says "
                         f"{expected[:16]}...: the file is damaged or was replaced; restore it "
                         "from the repository (git checkout) or rebuild the bundle")
    return path


def load_pretrained(name: str, device: torch.device | str = "cpu",
                    root: str | os.PathLike | None = None, **kwargs: Any) -> SurrogateModel:
    """The shipped surrogate ``name`` as a forecast model on states in K.

    Parameters
    ----------
    name : str
        A bundle name (:func:`available_pretrained`), e.g. ``"sqg_64_cpu"``.
    device : torch.device or str
    root : path-like, optional
        Folder of bundles (default: the kit's).
    **kwargs
        For :class:`~turbda_kit.surrogate.forecast_model.SurrogateModel`.

    Returns
    -------
    SurrogateModel
        ``advance(states (member, V, N, N) K, n_steps)``; one step is the export's lead time.

    Raises
    ------
    InputError
        Unknown name, or a file whose sha256 differs from the manifest's.
    """
    return SurrogateModel.from_export(_verified(name, root, EXPORT_FILE), device, **kwargs)


def load_heldout(name: str, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, float]:
    """The bundle's held-out truth ``(T, V, N, N)`` float32 K and its spacing in hours."""
    path = _verified(name, root, HELDOUT_FILE)
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["trajectory"].astype(np.float32)), float(data["hours_per_step"])


def score_heldout(model: SurrogateModel, trajectory: torch.Tensor, hours_per_step: float,
                  n_steps: int) -> dict[str, float]:
    """RMSE (K, both levels pooled) of ``model``'s rollouts from every window of ``trajectory``.

    Returns
    -------
    dict
        ``{"<lead hours>": rmse}`` for leads 1..``n_steps`` model steps, plus
        ``"persistence_<lead>"`` for the persistence forecast of the same windows.
    """
    scores = rollout_rmse(model.vit, trajectory, n_steps, model.lead_hours, model.normaliser,
                          hours_per_step=hours_per_step)
    out = {f"{h:g}": float(v) for h, v in zip(scores.lead_hours, scores.rmse_all)}
    out.update({f"persistence_{h:g}": float(v)
                for h, v in zip(scores.lead_hours, scores.persistence_rmse_all)})
    return out


def package_pretrained(export: str | os.PathLike, name: str, heldout: torch.Tensor,
                       hours_per_step: float, n_steps: int, *,
                       dest: str | os.PathLike | None = None,
                       training: dict[str, Any] | None = None,
                       weights: str = "int8") -> Path:
    """Write bundle ``name``: a clean copy of ``export``, the held-out sample, the manifest.

    Parameters
    ----------
    export : path-like
        A surrogate export with a normaliser and lead time (notebook 03's ``surrogate.pt``).
    name : str
        Bundle name (a folder name).
    heldout : Tensor, shape (T, V, N, N)
        Consecutive held-out truth states in K (e.g. the first test days), T > n_steps.
    hours_per_step : float
        Spacing of ``heldout``, hours.
    n_steps : int
        Model steps scored per window.
    dest : path-like, optional
        Folder of bundles (default: the kit's ``pretrained/``).
    training : dict, optional
        How the model was made (command, parameters); plain JSON values without machine
        paths.
    weights : {"int8", "float32"}
        Storage of the bundle's weights (:func:`~turbda_kit.surrogate.export.save_surrogate`;
        int8 keeps a 1.3M-parameter ViT under 2 MB). The manifest's ``rmse_K`` scores the
        stored weights; with int8, ``rmse_K_float32`` scores the export's own weights.

    Returns
    -------
    Path
        The bundle folder.
    """
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"bundle name {name!r} must be a plain folder name")
    source = read_surrogate(export)
    if source.normaliser is None or source.lead_time_hours is None:
        raise InputError(f"{export} has no normaliser or lead time: export it with "
                         "export_surrogate (notebook 03 does)")
    heldout = heldout.detach().to("cpu", torch.float32)
    if heldout.ndim != 4 or heldout.shape[0] <= n_steps:
        raise InputError(f"heldout must be (T, V, N, N) with T > n_steps={n_steps}, got "
                         f"{tuple(heldout.shape)}")
    folder = (Path(dest) if dest is not None else PRETRAINED_DIR) / name
    folder.mkdir(parents=True, exist_ok=True)
    git = git_revision()
    provenance = {"turbda_kit_version": __version__, "git_revision": git["revision"],
                  "torch": torch.__version__}
    metadata = {k: v for k, v in source.metadata.items() if k in _KEPT_METADATA}
    save_surrogate(source.model.config, source.model.state_dict(), folder / EXPORT_FILE,
                   metadata, normaliser=source.normaliser, provenance=provenance,
                   weights=weights)
    with atomic_path(folder / HELDOUT_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, trajectory=heldout.numpy(), hours_per_step=np.float64(hours_per_step))
    model = SurrogateModel.from_export(folder / EXPORT_FILE)
    scores = score_heldout(model, heldout, hours_per_step, n_steps)
    heldout_entry = {"states": int(heldout.shape[0]), "hours_per_step": float(hours_per_step),
                     "n_steps": int(n_steps), "rmse_K": scores}
    if weights != "float32":
        heldout_entry["rmse_K_float32"] = score_heldout(
            SurrogateModel.from_export(export), heldout, hours_per_step, n_steps)
    manifest = {
        "name": name,
        "description": f"ViT surrogate '{source.model.config.name}' of SQG, "
                       f"{source.lead_time_hours:g}-h steps, states in K",
        "files": {EXPORT_FILE: _sha256(folder / EXPORT_FILE),
                  HELDOUT_FILE: _sha256(folder / HELDOUT_FILE)},
        "parameters": int(sum(p.numel() for p in model.vit.parameters())),
        "lead_time_hours": source.lead_time_hours,
        "weights": weights,
        "heldout": heldout_entry,
        "training": training or {},
        "provenance": provenance,
    }
    write_json(folder / MANIFEST, manifest)
    return folder


def _package_cli(args: argparse.Namespace) -> int:
    catalog = open_shards(args.shards)
    trajectory, hours = split_trajectory(catalog, args.split)
    heldout = trajectory[:args.states]
    training = {"command": args.command, "parameters": json.loads(args.parameters)}
    folder = package_pretrained(args.export, args.name, heldout, hours, args.steps,
                                dest=args.dest, training=training, weights=args.weights)
    info = pretrained_info(args.name, args.dest)
    print(f"wrote {folder}: held-out RMSE (K) {info['heldout']['rmse_K']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m turbda_kit.surrogate.pretrained package|list ...``."""
    parser = argparse.ArgumentParser(prog="python -m turbda_kit.surrogate.pretrained",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    pack = sub.add_parser("package", help="make a bundle from an export and held-out shards")
    pack.add_argument("--export", required=True, help="surrogate export (surrogate.pt)")
    pack.add_argument("--shards", required=True, help="shard root with the held-out split")
    pack.add_argument("--split", default="test", help="held-out split (default test)")
    pack.add_argument("--states", type=int, default=12, help="consecutive states kept")
    pack.add_argument("--steps", type=int, default=10, help="model steps scored per window")
    pack.add_argument("--name", required=True, help="bundle name")
    pack.add_argument("--dest", default=None, help="folder of bundles (default: the kit's)")
    pack.add_argument("--command", default="", help="how the model was trained (recorded)")
    pack.add_argument("--parameters", default="{}", help="JSON training parameters (recorded)")
    pack.add_argument("--weights", choices=("int8", "float32"), default="int8",
                      help="weight storage (default int8: groups of 32 with float16 scales)")
    sub.add_parser("list", help="list the shipped bundles and their held-out scores")
    args = parser.parse_args(argv)
    try:
        if args.action == "package":
            return _package_cli(args)
        for name in available_pretrained():
            info = pretrained_info(name)
            print(f"{name}: {info['parameters']:,} parameters, held-out RMSE (K) "
                  f"{info['heldout']['rmse_K']}")
        return 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
