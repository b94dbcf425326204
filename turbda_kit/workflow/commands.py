"""Run one command (a benchmark or tool script) into a run directory, with provenance.

The pipelines' counterpart of :func:`turbda_kit.workflow.execute.run_notebook` for stages
that are scripts rather than notebooks (benchmarks print tables and write JSON summaries;
they are not notebooks). The run directory gets ``run.json`` (the command, its
parameters, code and environment provenance, timing, CPU time and status) and
``output.log`` (everything the command printed, also streamed to this process's stdout).

The command's words may hold placeholders filled in before it runs: ``{python}`` (this
interpreter), ``{run_dir}`` (the run directory), ``{repo}`` (the source tree the kit was
imported from) and ``{NAME}`` for each of the stage's parameters.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import provenance
from ..errors import InputError
from ..io import write_json
from .environment import with_process_defaults
from .execute import RunResult, check_run_dir
from .records import FAILED, OK, RUN_RECORD, RUNNING

__all__ = ["OUTPUT_LOG", "fill_command", "repo_root", "run_command"]

OUTPUT_LOG = "output.log"
_WORD_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def repo_root() -> Path:
    """The source tree the kit runs from (parent of the ``turbda_kit`` package)."""
    return Path(__file__).resolve().parents[2]


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_word(v) for v in value)
    return str(value)


def fill_command(command: Sequence[str], parameters: dict[str, Any], run_dir: Path
                 ) -> list[str]:
    """The command's words with ``{python}``, ``{run_dir}``, ``{repo}`` and ``{NAME}`` filled.

    Lists become comma-separated words, booleans ``true``/``false``.

    Raises
    ------
    InputError
        A placeholder that is neither built in nor a parameter.
    """
    values = {"python": sys.executable, "run_dir": str(run_dir), "repo": str(repo_root()),
              **{k: _word(v) for k, v in parameters.items()}}

    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise InputError(f"command placeholder {{{key}}} is not a parameter of the stage "
                             f"(parameters: {', '.join(sorted(parameters)) or 'none'}) nor one "
                             "of python, run_dir, repo")
        return values[key]

    return [_WORD_PLACEHOLDER.sub(replace, str(word)) for word in command]


def run_command(command: Sequence[str], parameters: dict[str, Any], out_dir: str | os.PathLike,
                log_output: bool = True, extra_record: dict[str, Any] | None = None,
                allow_existing: bool = False) -> RunResult:
    """Run ``command`` (placeholders filled) in the repository root; record ``run.json``.

    Parameters
    ----------
    command : sequence of str
        Program and arguments, with placeholders (module docstring).
    parameters : dict
        Values for the ``{NAME}`` placeholders (recorded in ``run.json``).
    out_dir : path-like
        Run directory (created; must be empty unless ``allow_existing``).
    log_output : bool
        Also stream the command's output to this process's stdout.
    extra_record : dict, optional
        Added to ``run.json``.
    allow_existing : bool
        Run into a directory that holds files (re-running an interrupted stage).

    Returns
    -------
    RunResult
        ``status`` ``"failed"`` when the command exits non-zero (its exit code and the
        last lines of its output are in ``run.json``).
    """
    run_dir = check_run_dir(out_dir, allow_existing).resolve()
    argv = fill_command(command, parameters, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = provenance.collect({
        "command": argv, "parameters": parameters, "parameters_given": parameters,
        "run_dir": str(run_dir), "status": RUNNING, "start_utc": provenance.utc_now()})
    record.update(extra_record or {})
    write_json(run_dir / RUN_RECORD, record)
    start = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tail: list[str] = []
    with open(run_dir / OUTPUT_LOG, "w") as log:
        try:
            proc = subprocess.Popen(argv, cwd=repo_root(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env=with_process_defaults(dict(os.environ)))
        except OSError as err:
            raise InputError(f"cannot start {argv[0]!r}: {err}") from None
        assert proc.stdout is not None
        for line in proc.stdout:  # line by line: the log survives a kill of this process
            log.write(line)
            log.flush()
            if log_output:
                sys.stdout.write(line)
                sys.stdout.flush()
            tail = (tail + [line.rstrip("\n")])[-20:]
        code = proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - start
    status = OK if code == 0 else FAILED
    record.update(status=status, exit_code=code, end_utc=provenance.utc_now(),
                  wall_seconds=round(wall, 3),
                  cpu_seconds=round(after.ru_utime - before.ru_utime
                                    + after.ru_stime - before.ru_stime, 3),
                  error=None if code == 0 else f"exit code {code}; last output:\n" + "\n".join(tail))
    write_json(run_dir / RUN_RECORD, record)
    return RunResult(run_dir, None, status, wall, record)
