"""Named chains of notebooks run into one shared pipeline directory.

Each stage runs into ``<pipeline_dir>/<stage name>/``. A stage's parameters may refer to
``{pipeline_dir}`` and to earlier stages' run directories as ``{stage:<name>}``; that is
how a stage's outputs reach the next one.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import provenance
from .errors import InputError
from .io import write_json
from .runner import OUT_DIR_PARAMETER, RunResult, notebook_parameters, run_notebook


def notebooks_dir() -> Path:
    """Where the kit's notebooks are: ``$TURBDA_NOTEBOOKS`` or the source tree's ``notebooks/``."""
    env = os.environ.get("TURBDA_NOTEBOOKS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks"


@dataclass(frozen=True)
class Stage:
    """One notebook of a pipeline.

    Attributes
    ----------
    name : str
        Stage name (its run directory's name).
    notebook : str
        Notebook file name, relative to :func:`notebooks_dir` (or absolute).
    parameters : dict
        Parameters of this stage; string values may hold ``{pipeline_dir}`` and
        ``{stage:<name>}`` placeholders.
    """

    name: str
    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def notebook_path(self) -> Path:
        """Absolute path of the stage's notebook."""
        p = Path(self.notebook)
        return p if p.is_absolute() else notebooks_dir() / p


# Each stage runs at its notebook's embedded default (laptop) size unless set here; the
# chain is the kit's whole story: truth -> training data -> surrogate -> DA -> coupled
# ViT+EnSF -> EnSF scaling -> figures.
PIPELINES: dict[str, list[Stage]] = {
    "quickstart": [
        Stage("01_generate_data", "01_generate_data.ipynb", {"N": 32, "days": 12}),
        Stage("02_preprocess", "02_preprocess.ipynb", {
            "nature_run": "{stage:01_generate_data}/nature_sqg.nc", "start_train_day": 0,
            "start_val_day": 8, "start_test_day": 10, "end_day": 12, "steps_per_file": 4,
            "num_shards": 1}),
        Stage("03_train_vit", "03_train_vit.ipynb", {
            "data_root": "{stage:02_preprocess}/shards", "config": "tiny"}),
        Stage("05_da_cycling", "05_da_cycling.ipynb", {
            "nature_run": "{stage:01_generate_data}/nature_sqg.nc", "n_cycles": 8}),
        Stage("06_coupled_vit_ensf", "06_coupled_vit_ensf.ipynb", {
            "checkpoint": "{stage:03_train_vit}/surrogate.pt",
            "nature_run": "{stage:01_generate_data}/nature_sqg.nc", "n_cycles": 8}),
        Stage("04_ensf_scaling", "04_ensf_scaling.ipynb"),
        Stage("fig_rmse_vs_time", "../figures/fig_rmse_vs_time.ipynb",
              {"runs": ["vit_only", "vit_ensf", "vit_ensf_shocks", "sqg_letkf", "sqg_ensf",
                        "sqg_free"]}),
    ],
    "check": [
        Stage("00_kit_check", "00_kit_check.ipynb"),
    ],
}

_PLACEHOLDER = re.compile(r"\{(pipeline_dir|stage:[A-Za-z0-9_.-]+)\}")


def _fill(value: Any, pipeline_dir: Path, stage_dirs: dict[str, Path]) -> Any:
    if isinstance(value, list):
        return [_fill(v, pipeline_dir, stage_dirs) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key == "pipeline_dir":
            return str(pipeline_dir)
        stage = key.split(":", 1)[1]
        if stage not in stage_dirs:
            raise InputError(f"placeholder {{{key}}} names a stage that has not run yet")
        return str(stage_dirs[stage])

    return _PLACEHOLDER.sub(replace, value)


def split_overrides(stages: list[Stage], overrides: dict[str, Any]
                    ) -> dict[str, dict[str, Any]]:
    """Assign command-line overrides to stages.

    ``name=value`` goes to every stage that declares ``name``; ``stage.name=value`` to
    that stage only. A name no stage declares is refused with the valid names.
    """
    declared = {s.name: notebook_parameters(s.notebook_path()) for s in stages}
    per_stage: dict[str, dict[str, Any]] = {s.name: {} for s in stages}
    for key, value in overrides.items():
        if "." in key and key.split(".", 1)[0] in declared:
            stage, name = key.split(".", 1)
            if name not in declared[stage]:
                raise InputError(f"stage {stage} has no parameter {name!r}; valid: "
                                 f"{', '.join(sorted(declared[stage]))}")
            per_stage[stage][name] = value
            continue
        targets = [s for s, params in declared.items() if key in params]
        if not targets or key == OUT_DIR_PARAMETER:
            valid = sorted({p for params in declared.values() for p in params} - {OUT_DIR_PARAMETER})
            raise InputError(f"no stage declares parameter {key!r}; valid names: "
                             f"{', '.join(valid)} (or STAGE.NAME with STAGE in "
                             f"{', '.join(declared)})")
        for stage in targets:
            per_stage[stage][key] = value
    return per_stage


def run_pipeline(name: str, overrides: dict[str, Any] | None = None,
                 out_dir: str | os.PathLike | None = None, log_output: bool = True,
                 stages: list[Stage] | None = None) -> list[RunResult]:
    """Run the named pipeline's stages in order, stopping at the first failure.

    Parameters
    ----------
    name : str
        A key of :data:`PIPELINES` (ignored for lookup when ``stages`` is given).
    overrides : dict, optional
        Command-line parameters (see :func:`split_overrides`).
    out_dir : path-like, optional
        Pipeline directory; default ``runs/<UTC time>-<name>``.
    log_output : bool
        Stream each notebook's output.
    stages : list of Stage, optional
        Use these stages instead of the registry's.

    Returns
    -------
    list of RunResult
        One per stage that ran; ``pipeline.json`` in the pipeline directory sums them up.
    """
    if stages is None:
        if name not in PIPELINES:
            raise InputError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
        stages = PIPELINES[name]
    per_stage = split_overrides(stages, dict(overrides or {}))
    if out_dir is None:
        out_dir = Path("runs") / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{name}"
    pipeline_dir = Path(out_dir).resolve()
    if pipeline_dir.exists() and any(pipeline_dir.iterdir()):
        raise InputError(f"pipeline directory {pipeline_dir} is not empty: choose a new --out")
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    stage_dirs: dict[str, Path] = {}
    results: list[RunResult] = []
    summary: dict[str, Any] = {"pipeline": name, "pipeline_dir": str(pipeline_dir),
                               "start_utc": provenance.utc_now(), "stages": []}
    for stage in stages:
        stage_dir = pipeline_dir / stage.name
        params = {k: _fill(v, pipeline_dir, stage_dirs) for k, v in stage.parameters.items()}
        params.update(per_stage[stage.name])
        print(f"[pipeline {name}] stage {stage.name}: {stage.notebook}", flush=True)
        result = run_notebook(stage.notebook_path(), params, stage_dir, log_output=log_output,
                              extra_record={"pipeline": name, "stage": stage.name})
        stage_dirs[stage.name] = stage_dir
        results.append(result)
        summary["stages"].append({"stage": stage.name, "status": result.status,
                                  "wall_seconds": round(result.wall_seconds, 3),
                                  "run_dir": str(stage_dir)})
        write_json(pipeline_dir / "pipeline.json", summary)
        if not result.ok:
            break
    summary["end_utc"] = provenance.utc_now()
    summary["status"] = "ok" if all(r.ok for r in results) and len(results) == len(stages) else "failed"
    write_json(pipeline_dir / "pipeline.json", summary)
    return results


def outputs_of(run_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """Files a run directory holds, grouped: notebooks, data, figures."""
    groups: dict[str, list[Path]] = {"notebooks": [], "data": [], "figures": []}
    for p in sorted(Path(run_dir).rglob("*")):
        if any(part.startswith(".") for part in p.parts):
            continue
        if p.suffix == ".ipynb" and "logs" not in p.parts:
            groups["notebooks"].append(p)
        elif p.suffix in (".nc", ".npz", ".pt", ".csv") or (p.suffix == ".zarr" and p.is_dir()):
            groups["data"].append(p)
        elif p.suffix in (".png", ".html", ".svg"):
            groups["figures"].append(p)
    return groups
