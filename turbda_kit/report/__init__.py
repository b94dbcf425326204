"""Result summaries and the README sections rendered from them.

* :mod:`.summaries` — the JSON files under ``results/`` that hold every stated number;
* :mod:`.readme` — marked README blocks rendered from those summaries, and the check that
  fails when the README and its summaries disagree;
* :mod:`.sections` — the renderers of the README's result blocks (registered on import);
* :mod:`.collect` — a pipeline's stage outputs into summaries, and ``publish``.
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
from .sections import NOT_YET, SECTIONS
from .summaries import Summary, default_results_dir, load_results, read_summary, write_summary

__all__ = ["NOT_YET", "RENDERERS", "SECTIONS", "Summary", "check_readme", "default_results_dir", "fmt", "load_results",
           "markdown_table", "read_summary", "render_readme", "renderer", "write_readme",
           "write_summary"]
