"""From a results-pipeline directory to the repository: summaries, the shipped model, figures.

``collect`` (the pipeline's last stage) turns the JSON each stage wrote into result
summaries (:mod:`turbda_kit.report.summaries`): one ``<stage>.json`` per stage, holding the
stage's own numbers, the command that regenerates them and the stage's provenance (git
revision, CPU seconds), with the pipeline directory's absolute paths made relative.

``publish`` copies what the README and the package rely on into a checkout: the summaries
into ``results/``, the pretrained bundle into ``turbda_kit/pretrained/``, the figures into
``figures/<stage>/`` (one folder per figure stage, so two stages' PNGs of the same name
never overwrite each other), and re-renders the README's result blocks
(:func:`turbda_kit.report.readme.write_readme`).

Both are plain functions; the pipeline calls them as
``python -m turbda_kit.report collect ...`` and users as ``turbda report publish DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from .readme import write_readme
from .summaries import default_results_dir, write_summary

__all__ = ["COMMAND", "collect", "publish", "relative_paths"]

COMMAND = "turbda pipeline paper"
RESULTS_SUBDIR = "results"


def relative_paths(value: Any, root: str) -> Any:
    """``value`` with every string under ``root`` made relative to it (and other absolute
    paths reduced to their file name), recursively: summaries carry no machine paths."""
    if isinstance(value, dict):
        return {k: relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, root) for v in value]
    if isinstance(value, str):
        if root and root in value:
            value = value.replace(root.rstrip("/") + "/", "").replace(root, ".")
        if value.startswith("/"):
            return Path(value).name
    return value


def _stage_record(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / "run.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is missing or not JSON ({err}): the stage did not run to the "
                         "end; run the pipeline again to finish it") from None
    if record.get("status") != "ok":
        raise InputError(f"stage {stage_dir.name} has status {record.get('status')!r} in "
                         f"{path}: run the pipeline again to finish it")
    return record


def collect(pipeline_dir: str | os.PathLike, out_dir: str | os.PathLike,
            files: Mapping[str, str], quick: bool = False) -> list[Path]:
    """Write ``out_dir/results/<stage>.json`` for each ``stage: file`` of ``files``.

    Parameters
    ----------
    pipeline_dir : path-like
        The pipeline directory (one sub-directory per stage).
    out_dir : path-like
        The collecting stage's run directory.
    files : mapping of str to str
        Stage name → the JSON file, relative to its run directory, that holds its numbers.
    quick : bool
        The pipeline ran at its tiny ``--quick`` size (recorded in each summary).

    Returns
    -------
    list of Path
        The summaries written. A stage without a directory (left out of a part run with
        ``turbda pipeline --only``) is skipped with a note; one that ran but did not finish
        is an error.

    Raises
    ------
    InputError
        A stage unfinished or failed, its JSON missing, or no stage to collect at all.
    """
    root = str(Path(pipeline_dir).resolve())
    results = Path(out_dir) / RESULTS_SUBDIR
    written = []
    skipped = []
    for stage, name in files.items():
        stage_dir = Path(root) / stage
        if not stage_dir.exists():
            skipped.append(stage)
            continue
        record = _stage_record(stage_dir)
        path = stage_dir / name
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"{path} is missing or not JSON ({err}): stage {stage} should "
                             "have written it") from None
        git = record.get("git") or {}
        provenance = {"stage": stage, "source_file": name, "quick": quick,
                      "stage_git_revision": git.get("revision"), "stage_git_dirty": git.get("dirty"),
                      "stage_cpu_seconds": record.get("cpu_seconds"),
                      "stage_wall_seconds": record.get("wall_seconds"),
                      "stage_start_utc": record.get("start_utc"),
                      "stage_parameters": relative_paths(record.get("parameters_given", {}), root)}
        written.append(write_summary(
            results / f"{stage}.json", relative_paths(data if isinstance(data, dict) else
                                                      {"value": data}, root),
            command=f"{COMMAND}{' --quick' if quick else ''} (stage {stage})",
            description=f"{name} of stage {stage}", provenance=provenance))
    if skipped:
        print(f"collect: not run in {root}, no summary: {', '.join(skipped)}", flush=True)
    if not written:
        raise InputError(f"{root} holds none of the stages {', '.join(files)}: nothing to "
                         "collect")
    return written


def publish(pipeline_dir: str | os.PathLike, repo: str | os.PathLike = ".",
            collect_stage: str = "collect", bundle_stage: str = "ship_vit",
            figures: Sequence[str] = ("fig_*/*.png",), readme: bool = True) -> list[Path]:
    """Copy a finished pipeline's summaries, shipped model and figures into a checkout.

    Parameters
    ----------
    pipeline_dir : path-like
        A pipeline directory whose ``collect`` stage finished.
    repo : path-like
        The checkout (default: the current directory).
    collect_stage, bundle_stage : str
        Stage names of the summaries and of the pretrained bundle.
    figures : sequence of str
        Glob patterns (relative to the pipeline directory) of the PNGs to copy; each goes to
        ``figures/<its stage>/<its name>``. The directories a re-run kept
        (``<stage>.replaced-<time>``, see :mod:`turbda_kit.workflow.pipelines`) are skipped:
        only a stage's current output is published.
    readme : bool
        Re-render the README's result blocks afterwards.

    Returns
    -------
    list of Path
        Files written in the checkout.

    Raises
    ------
    InputError
        Not a finished pipeline, or a checkout without ``README.md``/``turbda_kit/``.
    """
    source, repo = Path(pipeline_dir), Path(repo)
    if not (repo / "README.md").is_file() or not (repo / "turbda_kit").is_dir():
        raise InputError(f"{repo} is not a turbda_kit checkout (no README.md / turbda_kit/)")
    summaries = sorted((source / collect_stage / RESULTS_SUBDIR).glob("*.json"))
    if not summaries:
        raise InputError(f"{source / collect_stage / RESULTS_SUBDIR} holds no summaries: run "
                         "the pipeline to its end (stage collect) first")
    quick = any(json.loads(p.read_text()).get("provenance", {}).get("quick") for p in summaries)
    if quick:
        raise InputError(f"{source} ran at the --quick size: its numbers are not results; "
                         "publish a full run")
    written = []
    results = repo / "results"
    results.mkdir(exist_ok=True)
    for path in summaries:
        shutil.copyfile(path, results / path.name)
        written.append(results / path.name)
    for bundle in sorted((source / bundle_stage).glob("*/manifest.json")):
        target = repo / "turbda_kit" / "pretrained" / bundle.parent.name
        target.mkdir(parents=True, exist_ok=True)
        for item in bundle.parent.iterdir():
            shutil.copyfile(item, target / item.name)
            written.append(target / item.name)
    for pattern in figures:
        for png in sorted(source.glob(pattern)):
            stage = png.relative_to(source).parts[0]
            if ".replaced-" in stage:  # a re-run's kept old output, not a result
                continue
            target = repo / "figures" / stage / png.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            written.append(target)
    if readme:
        if write_readme(repo / "README.md", results):
            written.append(repo / "README.md")
    return written


def results_dir_of(repo: str | os.PathLike | None) -> Path:
    """``<repo>/results``, or the kit's own ``results/`` when ``repo`` is None."""
    return Path(repo) / "results" if repo is not None else default_results_dir()
