"""The report command: collect a pipeline's summaries; check, render, publish the README.

::

    python -m turbda_kit.report collect PIPELINE_DIR --out RUN_DIR [--quick true] STAGE=FILE ...
    python -m turbda_kit.report check   [--readme README.md] [--results DIR]  (DIR: results/ beside it)
    python -m turbda_kit.report render  [--readme README.md] [--results results]
    python -m turbda_kit.report publish PIPELINE_DIR [--repo .]

(``turbda report ...`` is the same.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from .collect import collect, publish
from .readme import check_readme, write_readme


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The report command's arguments (also mounted as ``turbda report``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m turbda_kit.report",
                                               description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    col = sub.add_parser("collect", help="summaries of a pipeline's stages (its last stage)")
    col.add_argument("pipeline_dir")
    col.add_argument("--out", required=True, help="the collecting stage's run directory")
    col.add_argument("--quick", default="false", choices=("true", "false"),
                     help="the pipeline ran at its --quick size")
    col.add_argument("files", nargs="+", metavar="STAGE=FILE",
                     help="a stage and the JSON file (in its run directory) with its numbers")
    for name, text in (("check", "fail when a README result block differs from its summaries"),
                       ("render", "rewrite the README's result blocks from the summaries")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--readme", default="README.md")
        cmd.add_argument("--results", default=None,
                         help="summaries folder (default: results/ beside the README)")
    pub = sub.add_parser("publish", help="copy a finished pipeline's summaries, shipped model "
                                         "and figures into the checkout, render the README")
    pub.add_argument("pipeline_dir")
    pub.add_argument("--repo", default=".", help="the checkout (default: .)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out parsed arguments; 0 ok, 1 README differs, 2 bad input."""
    try:
        if args.action in ("check", "render") and args.results is None:
            args.results = str(Path(args.readme).resolve().parent / "results")
        if args.action == "collect":
            pairs = dict(item.split("=", 1) for item in args.files if "=" in item)
            if len(pairs) != len(args.files):
                raise InputError(f"give STAGE=FILE pairs, got {args.files}")
            for path in collect(args.pipeline_dir, args.out, pairs, quick=args.quick == "true"):
                print("wrote", path)
        elif args.action == "check":
            problems = check_readme(args.readme, args.results)
            for diff in problems:
                print(diff)
            print(f"{args.readme}: {len(problems)} result block(s) differ from their summaries"
                  if problems else f"{args.readme}: every result block matches its summaries")
            return 1 if problems else 0
        elif args.action == "render":
            changed = write_readme(args.readme, args.results)
            print(f"{args.readme}: {'rewritten' if changed else 'already current'}")
        else:
            for path in publish(args.pipeline_dir, args.repo):
                print("wrote", path)
        return 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))

