"""Result summaries and the README sections rendered from them.

* :mod:`.summaries` — the JSON files under ``results/`` that hold every stated number;
* :mod:`.readme` — marked README blocks rendered from those summaries, and the check that
  fails when the README and its summaries disagree.
"""

from .readme import (
           RENDERERS,
           check_readme,
           fmt,
           markdown_table,
           render_readme,
           renderer,
           write_readme,
)
from .summaries import Summary, default_results_dir, load_results, read_summary, write_summary

__all__ = ["RENDERERS", "Summary", "check_readme", "default_results_dir", "fmt", "load_results",
           "markdown_table", "read_summary", "render_readme", "renderer", "write_readme",
           "write_summary"]
