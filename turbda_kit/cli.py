"""The ``turbda`` command: run notebooks and pipelines, report the environment.

Exit status: 0 success, 1 a notebook cell failed, 2 bad input (nothing run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import InputError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from .runner import load_parameter_file, parse_value

    params: dict[str, Any] = {}
    for f in args.param_file or []:
        params.update(load_parameter_file(f))
    for name, value in args.param or []:
        params[name] = parse_value(value)
    return params


def _print_outputs(run_dir: Path) -> None:
    from .pipelines import outputs_of

    groups = outputs_of(run_dir)
    print(f"run directory: {run_dir.resolve()}")
    for label, paths in groups.items():
        if paths:
            print(f"  {label}:")
            for p in paths:
                print(f"    {p.resolve()}")


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_notebook

    params = _collect_overrides(args)
    result = run_notebook(args.notebook, params, args.out, log_output=not args.quiet)
    if result.notebook is not None:
        _print_outputs(result.run_dir)
    if not result.ok:
        print(f"turbda: notebook failed: {result.record.get('error')}; see {result.notebook or result.run_dir}",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from .pipelines import PIPELINES, run_pipeline

    if args.list:
        for name, stages in PIPELINES.items():
            print(f"{name}: " + " -> ".join(s.name for s in stages))
        return EXIT_OK
    if not args.name:
        raise InputError("name a pipeline (turbda pipeline --list shows them)")
    params = _collect_overrides(args)
    results = run_pipeline(args.name, params, args.out, log_output=not args.quiet)
    pipeline_dir = results[0].run_dir.parent if results else Path(args.out or ".")
    print("\nstage                     status   wall (s)")
    for r in results:
        print(f"{r.run_dir.name:<25} {r.status:<8} {r.wall_seconds:8.1f}")
    _print_outputs(pipeline_dir)
    if not all(r.ok for r in results):
        return EXIT_FAILED
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import environment_report

    print(environment_report())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``turbda`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="turbda",
        description="turbda_kit: run parameterised notebooks with provenance, run notebook "
                    "pipelines, and report the environment.",
        epilog="Exit status: 0 ok, 1 a notebook cell failed, 2 bad input.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"turbda_kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_param_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                       help="set a parameter; VALUE is read as YAML (3, 1e-3, true, [1, 2], text). "
                            "Repeatable.")
        p.add_argument("-f", "--param-file", action="append", metavar="PARAMS.yaml",
                       help="YAML file of name: value parameters (applied before -p). Repeatable.")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="do not stream notebook output while running")

    run = sub.add_parser(
        "run", help="execute one notebook into a fresh run directory",
        description="Execute NOTEBOOK with papermill into a run directory (default "
                    "runs/<UTC time>-<stem>/) holding the executed notebook and run.json "
                    "(parameters, versions, git revision, host, device, MPI/Slurm, timing, "
                    "status). Under mpiexec/srun every rank runs a kernel in the same MPI "
                    "world; rank 0 writes the notebook and run.json.")
    run.add_argument("notebook", help="path to an .ipynb with a cell tagged 'parameters'")
    run.add_argument("--out", metavar="DIR", help="run directory (must be new or empty)")
    add_param_options(run)
    run.set_defaults(func=_cmd_run)

    pipe = sub.add_parser(
        "pipeline", help="run a named chain of notebooks",
        description="Run the stages of a named pipeline into one directory; each stage gets "
                    "its own sub-directory and reads earlier stages' outputs. -p NAME VALUE "
                    "sets NAME in every stage that declares it; -p STAGE.NAME VALUE in one.")
    pipe.add_argument("name", nargs="?", help="pipeline name (e.g. quickstart)")
    pipe.add_argument("--list", action="store_true", help="list the pipelines and their stages")
    pipe.add_argument("--out", metavar="DIR", help="pipeline directory (must be new or empty)")
    add_param_options(pipe)
    pipe.set_defaults(func=_cmd_pipeline)

    info = sub.add_parser(
        "info", help="versions, devices, MPI, DeepSpeed and Jupyter kernel status",
        description="Print the kit's version, Python/torch/numpy versions, devices "
                    "(CPU/CUDA/ROCm), the MPI implementation and launch size, and whether "
                    "DeepSpeed and the Jupyter kernel are usable.")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``turbda``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except InputError as err:
        print(f"turbda: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("turbda: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
