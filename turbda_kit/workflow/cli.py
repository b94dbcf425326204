"""The ``turbda`` command (also ``python -m turbda_kit``): run notebooks and pipelines,
report the environment.

Exit status: 0 success, 1 a notebook cell failed, 2 bad input (one line on stderr; nothing
written, nothing run), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError
from ..provenance import process_rank
from ..report import cli as report_commands
from .environment import apply_process_defaults
from .execute import run_notebook
from .info import environment_report
from .parameters import CommandLineText, load_parameter_file
from .pipelines import (
    PIPELINES,
    default_pipeline_dir,
    describe_pipeline,
    get_pipeline,
    outputs_of,
    run_pipeline,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``-f`` files in order, then ``-p`` values (read against each parameter's hint later)."""
    params: dict[str, Any] = {}
    for f in args.param_file or []:
        params.update(load_parameter_file(f))
    for name, value in args.param or []:
        params[name] = CommandLineText(value)
    return params


def _print_outputs(run_dir: Path) -> None:
    groups = outputs_of(run_dir)
    print(f"run directory: {run_dir.resolve()}")
    for label, paths in groups.items():
        if paths:
            print(f"  {label}:")
            for p in paths:
                print(f"    {p.resolve()}")


def _cmd_run(args: argparse.Namespace) -> int:
    params = _collect_overrides(args)
    result = run_notebook(args.notebook, params, args.out, log_output=not args.quiet,
                          verbose=args.verbose)
    if result.notebook is not None and not args.quiet:
        _print_outputs(result.run_dir)
    if not result.ok:
        where = result.notebook or result.run_dir
        print(f"turbda: notebook failed: {result.record.get('error')}; see {where}",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _only_stages(values: list[str] | None) -> list[str] | None:
    """``--only a,b --only c`` → ``['a', 'b', 'c']`` (None when not given)."""
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _cmd_pipeline(args: argparse.Namespace) -> int:
    if args.list:
        chosen = [get_pipeline(args.name)] if args.name else list(PIPELINES.values())
        print("\n\n".join(describe_pipeline(p, args.quick) for p in chosen))
        return EXIT_OK
    if not args.name:
        raise InputError("name a pipeline (turbda pipeline --list shows them)")
    params = _collect_overrides(args)
    pipeline_dir = Path(args.out) if args.out else default_pipeline_dir(args.name)
    results = run_pipeline(args.name, params, pipeline_dir, log_output=not args.quiet,
                           quick=args.quick, restart_from=args.restart_from,
                           verbose=args.verbose, announce=not args.quiet, until=args.until,
                           only=_only_stages(args.only))
    if not args.quiet and process_rank() == 0:
        if results:
            print("\nstage                     status   wall (s)")
            for r in results:
                print(f"{r.run_dir.name:<25} {r.status:<8} {r.wall_seconds:8.1f}")
        else:
            print("\nevery stage was done already: nothing ran")
        _print_outputs(pipeline_dir)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"turbda: stage {failed[0].run_dir.name} failed: {failed[0].record.get('error')}; "
              f"run the same command again to continue from it", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    print(environment_report())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``turbda`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="turbda",
        description="turbda_kit: run parameterised notebooks with provenance, run notebook "
                    "pipelines, and report the environment.",
        epilog="Exit status: 0 ok, 1 a notebook cell failed, 2 bad input (nothing run).")
    parser.add_argument("--version", action="version", version=f"turbda_kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_param_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                       help="set a parameter; VALUE is read as YAML (3, 1e-3, true, [1, 2], "
                            "{a: 1}, null, text) and must match the parameter's type hint. "
                            "Repeatable.")
        p.add_argument("-f", "--param-file", action="append", metavar="PARAMS.yaml",
                       help="YAML file of name: value parameters (applied before -p). Repeatable.")
        noise = p.add_mutually_exclusive_group()
        noise.add_argument("-q", "--quiet", action="store_true",
                           help="print nothing while running (errors still go to stderr)")
        noise.add_argument("-v", "--verbose", action="store_true",
                           help="also print papermill's 'Executing Cell N' lines")

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
        "pipeline", help="run (or continue) a named chain of notebooks",
        description="Run the stages of a named pipeline into one directory; each stage gets "
                    "its own sub-directory and reads earlier stages' outputs. -p NAME VALUE "
                    "sets NAME in every stage that declares it; -p STAGE.NAME VALUE in one. "
                    "Run again with the same --out to continue: completed stages with the "
                    "same parameters are skipped, an interrupted stage runs again, and so "
                    "does a completed stage that reads a stage re-run since.")
    pipe.add_argument("name", nargs="?", help="pipeline name (e.g. quickstart)")
    pipe.add_argument("--list", action="store_true",
                      help="list the pipelines, their stages and estimated CPU times")
    pipe.add_argument("--out", metavar="DIR",
                      help="pipeline directory (new, empty, or this pipeline's to continue)")
    pipe.add_argument("--quick", action="store_true",
                      help="run every stage at the pipeline's tiny 'quick' size")
    pipe.add_argument("--restart-from", metavar="STAGE",
                      help="run STAGE and all later stages again even if they completed "
                           "(their old directories are kept as STAGE.replaced-<time>)")
    pipe.add_argument("--until", metavar="STAGE",
                      help="stop after STAGE (later stages are neither checked nor run; run "
                           "again without --until to continue)")
    pipe.add_argument("--only", metavar="STAGE[,STAGE]", action="append",
                      help="run only these stages and the stages they read (repeatable); "
                           "independent parts can run at once into separate --out "
                           "directories; run again without --only to continue with the rest")
    add_param_options(pipe)
    pipe.set_defaults(func=_cmd_pipeline)

    info = sub.add_parser(
        "info", help="versions, devices, MPI, DeepSpeed, Jupyter kernel, OpenMP settings",
        description="Print the kit's version, Python/torch/numpy versions, devices "
                    "(CPU/CUDA/ROCm), the MPI implementation and launch size, whether "
                    "DeepSpeed and the Jupyter kernel are usable, and warn about an OpenMP "
                    "wait policy that makes processes on shared cores slow each other down.")
    info.set_defaults(func=_cmd_info)

    report = sub.add_parser(
        "report", help="result summaries and the README: check, render, publish, collect",
        description="The README's result sections are rendered from the summaries in "
                    "results/. 'check' fails (exit 1) when a block differs; 'render' rewrites "
                    "the blocks; 'publish DIR' copies a finished `turbda pipeline paper` run's "
                    "summaries, shipped model and figures into the checkout and renders; "
                    "'collect' is the pipeline's last stage.")
    report_commands.build_parser(report)
    report.set_defaults(func=report_commands.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``turbda``; returns the exit status."""
    apply_process_defaults()  # before anything imports torch; kernels inherit it
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except InputError as err:
        print(f"turbda: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("turbda: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `turbda pipeline --list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
