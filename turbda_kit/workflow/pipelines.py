"""Named chains of notebooks run into one shared, resumable pipeline directory.

Pipelines are data: ``pipelines.yaml`` beside this module lists each pipeline's stages
(notebook, parameters, ``--quick`` parameters, estimated CPU time, whether the notebook
resumes from its own checkpoints). Adding a pipeline is adding an entry there.

Each stage runs into ``<pipeline_dir>/<stage name>/``. A stage's parameters may refer to
``{pipeline_dir}`` and to earlier stages' run directories as ``{stage:<name>}``; that is
how a stage's outputs reach the next one.

Running the same pipeline again into the same directory continues it:

* a stage whose ``run.json`` says ``ok`` with the same parameters is skipped;
* a stage that was interrupted or failed (``run.json`` says ``running`` or ``failed``, or
  its directory has no ``run.json``) is run again into its own directory, where a
  resumable notebook continues from its checkpoints;
* a completed stage whose parameters changed is refused (:class:`InputError`, listing the
  differences), unless ``restart_from`` names it or an earlier stage: then that stage and
  every later one run again, each old directory kept as ``<stage>.replaced-<UTC time>``;
* a completed stage whose inputs are newer than it is *stale* and runs again the same way:
  a stage it reads (``{stage:<name>}``; a stage reading ``{pipeline_dir}`` reads every
  earlier stage) runs this time or finished after it started (re-run earlier with
  ``only``/``restart_from``), so nothing is built on outputs that were replaced.

``only`` runs a part of a pipeline: the named stages and every stage they read through
``{stage:<name>}`` (transitively), in pipeline order. Independent parts can then run as
separate processes into separate directories (one per core), and a later call without
``only`` into the same directory continues with the stages left out.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import provenance
from ..errors import InputError
from ..io import write_json
from .commands import fill_command, run_command
from .execute import RunResult, run_notebook
from .parameters import OUT_DIR_PARAMETER, check_parameters, notebook_parameters
from .records import FAILED, OK, read_record

PIPELINE_RECORD = "pipeline.json"
PIPELINES_FILE = Path(__file__).resolve().with_name("pipelines.yaml")


def notebooks_dir() -> Path:
    """Where the kit's notebooks are: ``$TURBDA_NOTEBOOKS`` or the source tree's ``notebooks/``."""
    env = os.environ.get("TURBDA_NOTEBOOKS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "notebooks"


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
    quick : dict
        Parameters applied over ``parameters`` with ``quick=True`` (``--quick``).
    estimate_cpu_s : float
        Estimated CPU time of the stage, seconds (printed before a run).
    quick_estimate_cpu_s : float or None
        The same with ``quick=True`` (None: ``estimate_cpu_s``).
    resumable : bool
        The notebook (or command) continues from its own checkpoints in its run directory.
    command : tuple of str
        A script stage instead of a notebook (``notebook`` is then empty): program and
        arguments run in the repository root by
        :func:`~turbda_kit.workflow.commands.run_command`, with ``{NAME}`` placeholders for
        the stage's ``parameters`` (which are then its declared parameters).
    """

    name: str
    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    estimate_cpu_s: float = 60.0
    quick_estimate_cpu_s: float | None = None
    resumable: bool = False
    command: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """What the stage runs, for listings: the notebook, or the command's script."""
        if not self.command:
            return self.notebook
        words = [w for w in self.command if not w.startswith("{")]
        return " ".join(words[:2]) if words else " ".join(self.command[:2])

    def notebook_path(self) -> Path:
        """Absolute path of the stage's notebook."""
        p = Path(self.notebook)
        return p if p.is_absolute() else (notebooks_dir() / p).resolve()

    def declared_parameters(self) -> dict[str, Any]:
        """Parameters a user may set: the notebook's, or a command stage's own defaults."""
        if self.command:
            return {**self.parameters, **{k: v for k, v in self.quick.items()
                                          if k not in self.parameters}}
        return notebook_parameters(self.notebook_path())

    def estimate(self, quick: bool = False) -> float:
        """Estimated CPU seconds at the pipeline size (or the quick size)."""
        if quick and self.quick_estimate_cpu_s is not None:
            return self.quick_estimate_cpu_s
        return self.estimate_cpu_s


@dataclass(frozen=True)
class Pipeline:
    """A named list of stages (see ``pipelines.yaml``)."""

    name: str
    stages: tuple[Stage, ...]
    description: str = ""

    def estimate(self, quick: bool = False) -> float:
        """Estimated CPU seconds of all stages."""
        return sum(s.estimate(quick) for s in self.stages)


_STAGE_KEYS = {"name", "notebook", "command", "parameters", "quick", "estimate_cpu_s",
               "quick_estimate_cpu_s", "resumable"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def pipeline_from_data(name: str, data: Any, source: str = "") -> Pipeline:
    """Build and check a :class:`Pipeline` from its YAML mapping.

    Raises
    ------
    InputError
        Missing or unknown keys, duplicate or malformed stage names, wrong value types.
    """
    where = f"pipeline {name!r}{' in ' + source if source else ''}"
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise InputError(f"{where}: needs a non-empty 'stages' list")
    stages = []
    for i, entry in enumerate(data["stages"]):
        if not isinstance(entry, dict) or "name" not in entry or \
                ("notebook" in entry) == ("command" in entry):
            raise InputError(f"{where}: stage {i + 1} needs 'name' and one of 'notebook' or "
                             "'command'")
        command = entry.get("command", [])
        if not isinstance(command, list) or (("command" in entry) and not command):
            raise InputError(f"{where}: stage {entry['name']!r}: command must be a non-empty "
                             "list of words")
        unknown = set(entry) - _STAGE_KEYS
        if unknown:
            raise InputError(f"{where}: stage {entry['name']!r} has unknown keys "
                             f"{sorted(unknown)}; allowed: {sorted(_STAGE_KEYS)}")
        if not _NAME.match(str(entry["name"])):
            raise InputError(f"{where}: stage name {entry['name']!r} must use letters, digits, "
                             "'_', '.', '-'")
        for key in ("parameters", "quick"):
            if not isinstance(entry.get(key, {}) or {}, dict):
                raise InputError(f"{where}: stage {entry['name']!r}: {key} must be a mapping")
        stages.append(Stage(str(entry["name"]), str(entry.get("notebook", "")),
                            dict(entry.get("parameters") or {}), dict(entry.get("quick") or {}),
                            float(entry.get("estimate_cpu_s", 60.0)),
                            None if entry.get("quick_estimate_cpu_s") is None
                            else float(entry["quick_estimate_cpu_s"]),
                            bool(entry.get("resumable", False)),
                            tuple(str(w) for w in command)))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise InputError(f"{where}: stage names repeat: {names}")
    return Pipeline(name, tuple(stages), str(data.get("description", "")).strip())


def load_pipelines(path: str | os.PathLike = PIPELINES_FILE) -> dict[str, Pipeline]:
    """All pipelines of a YAML file (default: the kit's ``pipelines.yaml``)."""
    p = Path(path)
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise InputError(f"{p} must hold a mapping of pipeline name to pipeline")
    return {name: pipeline_from_data(name, entry, p.name) for name, entry in data.items()}


PIPELINES: dict[str, Pipeline] = load_pipelines()

_PLACEHOLDER = re.compile(r"\{(pipeline_dir|stage:[A-Za-z0-9_.-]+)\}")


def _fill(value: Any, pipeline_dir: Path, stage_dirs: dict[str, Path]) -> Any:
    if isinstance(value, list):
        return [_fill(v, pipeline_dir, stage_dirs) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, pipeline_dir, stage_dirs) for k, v in value.items()}
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


def stage_dependencies(stage: Stage) -> set[str]:
    """Names of the stages whose directories ``stage`` reads (its ``{stage:<name>}``
    placeholders in parameters, quick parameters and command)."""
    return {key.split(":", 1)[1] for key in _placeholders(stage) if key.startswith("stage:")}


def _placeholders(stage: Stage) -> set[str]:
    """Every ``{...}`` placeholder key in a stage's parameters, quick parameters and command."""
    found: set[str] = set()

    def scan(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                scan(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                scan(v)
        elif isinstance(value, str):
            found.update(m.group(1) for m in _PLACEHOLDER.finditer(value))

    scan([stage.parameters, stage.quick, list(stage.command)])
    return found


def stage_inputs(stage: Stage, earlier: list[str] | tuple[str, ...]) -> set[str]:
    """The stages among ``earlier`` whose outputs ``stage`` reads: its
    ``{stage:<name>}`` placeholders, or all of ``earlier`` when it reads the whole pipeline
    directory (``{pipeline_dir}``, e.g. the results collector)."""
    if "pipeline_dir" in _placeholders(stage):
        return set(earlier)
    return stage_dependencies(stage) & set(earlier)


def select_stages(stages: tuple[Stage, ...] | list[Stage], only: list[str] | tuple[str, ...]
                  ) -> tuple[Stage, ...]:
    """The stages named in ``only`` and, transitively, the stages they read, in order.

    Raises
    ------
    InputError
        A name that is not a stage.
    """
    by_name = {s.name: s for s in stages}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise InputError(f"only: {', '.join(map(repr, unknown))} "
                         f"{'is not a stage' if len(unknown) == 1 else 'are not stages'}; "
                         f"stages: {', '.join(by_name)}")
    wanted: set[str] = set()
    todo = list(only)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        todo.extend(d for d in stage_dependencies(by_name[name]) if d in by_name)
    return tuple(s for s in stages if s.name in wanted)


def split_overrides(stages: tuple[Stage, ...] | list[Stage], overrides: dict[str, Any]
                    ) -> dict[str, dict[str, Any]]:
    """Assign command-line overrides to stages.

    ``name=value`` goes to every stage that declares ``name``; ``stage.name=value`` to
    that stage only. A name no stage declares is refused with the valid names.
    """
    declared = {s.name: s.declared_parameters() for s in stages}
    per_stage: dict[str, dict[str, Any]] = {s.name: {} for s in stages}
    for key, value in overrides.items():
        if "." in key and key.split(".", 1)[0] in declared:
            stage, name = key.split(".", 1)
            if name not in declared[stage] or name == OUT_DIR_PARAMETER:
                valid = sorted(set(declared[stage]) - {OUT_DIR_PARAMETER})
                raise InputError(f"stage {stage} has no parameter {name!r}; valid: "
                                 f"{', '.join(valid)}")
            per_stage[stage][name] = value
            continue
        targets = [s for s, params in declared.items() if key in params]
        if not targets or key == OUT_DIR_PARAMETER:
            valid = sorted({p for params in declared.values() for p in params} - {OUT_DIR_PARAMETER})
            stage_hint = f" (a stage named {key.split('.', 1)[0]!r} does not exist)" \
                if "." in key else ""
            raise InputError(f"no stage declares parameter {key!r}{stage_hint}; valid names: "
                             f"{', '.join(valid)} (or STAGE.NAME with STAGE in "
                             f"{', '.join(declared)})")
        for stage in targets:
            per_stage[stage][key] = value
    return per_stage


def default_pipeline_dir(name: str, root: str | os.PathLike = "runs") -> Path:
    """``runs/<UTC time>-<name>``."""
    return Path(root) / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{name}"


def get_pipeline(name: str) -> Pipeline:
    """The registered pipeline ``name``."""
    if name not in PIPELINES:
        raise InputError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))} "
                         "(turbda pipeline --list)")
    return PIPELINES[name]


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def describe_pipeline(pipeline: Pipeline, quick: bool = False) -> str:
    """Multi-line listing: stages, notebooks and estimated CPU times."""
    size = "quick size" if quick else "pipeline size"
    lines = [f"{pipeline.name}: {pipeline.description}" if pipeline.description else pipeline.name,
             f"  estimated CPU time at {size}: {_format_seconds(pipeline.estimate(quick))}"]
    for i, s in enumerate(pipeline.stages, 1):
        resumable = ", resumable" if s.resumable else ""
        lines.append(f"  {i}. {s.name:<22} {s.label:<34} ~{_format_seconds(s.estimate(quick))}"
                     f"{resumable}")
    return "\n".join(lines)


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as run.json holds them (JSON round trip), without ``out_dir``."""
    data = json.loads(json.dumps(params, default=str))
    data.pop(OUT_DIR_PARAMETER, None)
    return data


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '(default)')!r} -> {new.get(k, '(default)')!r}"
            for k in keys if old.get(k, "(default)") != new.get(k, "(default)")]


def _newer_inputs(stage: Stage, all_names: list[str], pipeline_dir: Path,
                  will_run: set[str]) -> list[str]:
    """The stages ``stage`` reads that run this time or finished after it started."""
    earlier = all_names[:all_names.index(stage.name)]
    started = (read_record(pipeline_dir / stage.name) or {}).get("start_utc") or ""
    newer = []
    for name in sorted(stage_inputs(stage, earlier), key=earlier.index):
        if name in will_run:
            newer.append(name)
            continue
        record = read_record(pipeline_dir / name) if (pipeline_dir / name).is_dir() else None
        finished = (record or {}).get("end_utc") or ""
        if record is not None and record.get("status") == OK and finished > started:
            newer.append(name)  # UTC stamps of one format: text order is time order
    return newer


def _stage_state(stage_dir: Path, params: dict[str, Any]) -> tuple[str, list[str]]:
    """``("new" | "done" | "changed" | "unfinished", differences)`` of a stage directory."""
    if not stage_dir.exists():
        return "new", []
    record = read_record(stage_dir)
    if record is None or record.get("status") != OK:
        return "unfinished", []
    diff = _differences(_comparable(record.get("parameters_given", {})), _comparable(params))
    return ("changed", diff) if diff else ("done", [])


def run_pipeline(name: str, overrides: dict[str, Any] | None = None,
                 out_dir: str | os.PathLike | None = None, log_output: bool = True,
                 stages: list[Stage] | tuple[Stage, ...] | None = None, quick: bool = False,
                 restart_from: str | None = None, verbose: bool = False,
                 announce: bool = True, until: str | None = None,
                 only: list[str] | tuple[str, ...] | None = None) -> list[RunResult]:
    """Run (or continue) the named pipeline's stages in order, stopping at the first failure.

    Parameters
    ----------
    name : str
        A key of :data:`PIPELINES` (only a label when ``stages`` is given).
    overrides : dict, optional
        Command-line parameters (see :func:`split_overrides`); they win over ``quick``.
    out_dir : path-like, optional
        Pipeline directory; default ``runs/<UTC time>-<name>``. A directory holding this
        pipeline's ``pipeline.json`` is continued (see the module docstring); any other
        non-empty directory is refused.
    log_output : bool
        Stream each notebook's output.
    stages : sequence of Stage, optional
        Use these stages instead of the registry's.
    quick : bool
        Use each stage's ``quick`` parameters (a tiny size for checks).
    restart_from : str, optional
        Run this stage and all later ones again even if they completed.
    verbose : bool
        Stream papermill's per-cell lines too.
    announce : bool
        Print the stages and their estimated CPU time before running.
    until : str, optional
        Stop after this stage: later stages are left out (not checked, not run), and a
        later call without ``until`` continues with them.
    only : sequence of str, optional
        Run only these stages and the stages they read (see :func:`select_stages`); a
        later call without ``only`` continues with the rest. Applied before ``until``.

    Returns
    -------
    list of RunResult
        One per stage that ran this time (skipped stages are not included);
        ``pipeline.json`` in the pipeline directory sums up every stage.

    Raises
    ------
    InputError
        Unknown pipeline, stage or parameter, a wrong parameter type, a directory of
        another pipeline, a completed stage with changed parameters. Raised before any
        stage runs.
    """
    pipeline = Pipeline(name, tuple(stages)) if stages is not None else get_pipeline(name)
    all_names = [s.name for s in pipeline.stages]  # before only/until: for staleness
    if only:
        pipeline = Pipeline(pipeline.name, select_stages(pipeline.stages, list(only)),
                            pipeline.description)
    names = [s.name for s in pipeline.stages]
    if until is not None:
        if until not in names:
            raise InputError(f"until={until!r} is not a stage of {name}; stages: "
                             f"{', '.join(names)}")
        kept = names.index(until) + 1
        pipeline = Pipeline(pipeline.name, pipeline.stages[:kept], pipeline.description)
        names = names[:kept]
    if restart_from is not None and restart_from not in names:
        raise InputError(f"restart_from={restart_from!r} is not a stage of {name}; stages: "
                         f"{', '.join(names)}")
    per_stage = split_overrides(pipeline.stages, dict(overrides or {}))
    pipeline_dir = Path(out_dir) if out_dir is not None else default_pipeline_dir(name)
    if pipeline_dir.exists() and not pipeline_dir.is_dir():
        raise InputError(f"pipeline directory {pipeline_dir} is a file: give a directory for --out")
    pipeline_dir = pipeline_dir.resolve()
    previous = _read_pipeline_record(pipeline_dir)
    if previous is None and pipeline_dir.exists() and any(pipeline_dir.iterdir()):
        raise InputError(f"pipeline directory {pipeline_dir} is not empty and holds no "
                         f"{PIPELINE_RECORD}: choose a new --out")
    if previous is not None and previous.get("pipeline") != name:
        raise InputError(f"pipeline directory {pipeline_dir} holds pipeline "
                         f"{previous.get('pipeline')!r}, not {name!r}: choose a new --out")

    # Plan every stage before running any: parameters, types, what to skip or refuse.
    stage_dirs = {s.name: pipeline_dir / s.name for s in pipeline.stages}
    restart_index = names.index(restart_from) if restart_from is not None else len(names)
    plan = []
    will_run: set[str] = set()
    stale_inputs: dict[str, list[str]] = {}
    for i, stage in enumerate(pipeline.stages):
        raw = {**stage.parameters, **(stage.quick if quick else {})}
        earlier = {n: stage_dirs[n] for n in names[:i]}
        params = {k: _fill(v, pipeline_dir, earlier) for k, v in raw.items()}
        params.update(per_stage[stage.name])
        params = (_check_command_parameters(stage, params) if stage.command else
                  check_parameters(notebook_parameters(stage.notebook_path()), params,
                                   stage.notebook_path()))
        if stage.command:  # placeholders checked now, not when the stage's turn comes
            fill_command(stage.command, params, stage_dirs[stage.name])
        state, diff = _stage_state(stage_dirs[stage.name], params)
        if i >= restart_index and state in ("done", "changed"):
            state = "restart"
        if state == "changed":
            raise InputError(f"stage {stage.name} completed with other parameters ("
                             f"{'; '.join(diff)}): use a new --out, or restart from it "
                             f"(--restart-from {stage.name})")
        if state == "done":
            newer = _newer_inputs(stage, all_names, pipeline_dir, will_run)
            if newer:
                state, stale_inputs[stage.name] = "stale", newer
        if state != "done":
            will_run.add(stage.name)
        plan.append((stage, params, state))

    if announce:
        todo = [(s, st) for s, _, st in plan if st != "done"]
        print(f"[pipeline {name}] {len(plan)} stages, {len(plan) - len(todo)} already done; "
              f"estimated CPU time of the rest {_format_seconds(sum(s.estimate(quick) for s, _ in todo))}"
              f"{' (quick size)' if quick else ''}", flush=True)
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"pipeline": name, "pipeline_dir": str(pipeline_dir),
                               "quick": quick, "start_utc": provenance.utc_now(), "stages": []}
    if until is not None:
        summary["until"] = until
    if only:
        summary["only"] = list(only)
    if previous is not None:
        summary["first_start_utc"] = previous.get("first_start_utc", previous.get("start_utc"))
    results: list[RunResult] = []
    failed = False
    for stage, params, state in plan:
        stage_dir = stage_dirs[stage.name]
        entry: dict[str, Any] = {"stage": stage.name, "run_dir": str(stage_dir),
                                 "estimate_cpu_s": stage.estimate(quick)}
        if failed:
            entry["status"] = "not run"
        elif state == "done":
            record = read_record(stage_dir) or {}
            entry.update(status=OK, skipped=True, wall_seconds=record.get("wall_seconds"))
            if announce:
                print(f"[pipeline {name}] stage {stage.name}: done earlier, skipped", flush=True)
        else:
            if state in ("restart", "stale"):
                stage_dir.rename(stage_dir.with_name(
                    f"{stage.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"))
            if announce:
                again = {"unfinished": " (again: continuing the interrupted run)",
                         "restart": " (restarted)",
                         "stale": " (again: newer inputs from "
                                  f"{', '.join(stale_inputs.get(stage.name, []))})"
                         }.get(state, "")
                print(f"[pipeline {name}] stage {stage.name}: {stage.label}, "
                      f"~{_format_seconds(stage.estimate(quick))} CPU{again}", flush=True)
            extra = {"pipeline": name, "stage": stage.name}
            if stage.command:
                result = run_command(stage.command, params, stage_dir, log_output=log_output,
                                     extra_record=extra, allow_existing=state == "unfinished")
            else:
                result = run_notebook(stage.notebook_path(), params, stage_dir,
                                      log_output=log_output, extra_record=extra,
                                      verbose=verbose, allow_existing=state == "unfinished")
            results.append(result)
            entry.update(status=result.status, wall_seconds=round(result.wall_seconds, 3))
            failed = not result.ok
        summary["stages"].append(entry)
        write_json(pipeline_dir / PIPELINE_RECORD, {**summary, "status": "running"})
    summary["end_utc"] = provenance.utc_now()
    summary["status"] = FAILED if failed else OK
    write_json(pipeline_dir / PIPELINE_RECORD, summary)
    return results


def _check_command_parameters(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """A command stage's values, each of its default's type (an int is taken for a float).

    Raises
    ------
    InputError
        One line naming the stage, parameter, expected type and value.
    """
    defaults = stage.declared_parameters()
    for key, value in params.items():
        default = defaults.get(key)
        if default is None or value is None:
            continue
        expected = type(default)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        ok = ok or (expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise InputError(f"stage {stage.name}: parameter {key} expects {expected.__name__}, "
                             f"got {value!r}")
    return {k: (float(v) if isinstance(defaults.get(k), float) and isinstance(v, int)
                and not isinstance(v, bool) else v) for k, v in params.items()}


def _read_pipeline_record(pipeline_dir: Path) -> dict[str, Any] | None:
    path = pipeline_dir / PIPELINE_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path} is not valid JSON ({err}): choose a new --out") from err
    return data if isinstance(data, dict) else None


def outputs_of(run_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """Files a run directory holds, grouped: notebooks, data, figures."""
    groups: dict[str, list[Path]] = {"notebooks": [], "data": [], "figures": []}
    for p in sorted(Path(run_dir).rglob("*")):
        if any(part.startswith(".") for part in p.parts) or ".replaced-" in str(p):
            continue
        if p.suffix == ".ipynb" and "logs" not in p.parts:
            groups["notebooks"].append(p)
        elif p.suffix in (".nc", ".npz", ".pt", ".csv") or (p.suffix == ".zarr" and p.is_dir()):
            groups["data"].append(p)
        elif p.suffix in (".png", ".html", ".svg"):
            groups["figures"].append(p)
    return groups
