"""Progress reporting for long work, one convention for the whole kit.

* In a notebook open in JupyterLab (or Jupyter Notebook): a progress widget
  (``tqdm.notebook``).
* On an interactive terminal: a ``tqdm`` bar.
* Elsewhere (papermill, ``turbda run``, nbconvert, Slurm logs, CI): plain lines, at most
  one every ``every_seconds`` seconds plus the first and last, and no carriage returns.
* Under MPI / torch.distributed: only rank 0 reports.

:func:`progress_mode` decides; ``TURBDA_PROGRESS=widget|terminal|plain`` overrides it
(``TURBDA_PLAIN_PROGRESS=1``, which ``turbda run`` sets for its kernels, means ``plain``).
A kernel counts as interactive when a Jupyter server started it: the server names the
notebook in ``JPY_SESSION_NAME``, or the kernel's parent process is ``jupyter-lab``,
``jupyter-notebook`` or ``jupyter-server``. A kernel that papermill, nbclient or nbconvert
started has neither, so batch runs print plain lines even without ``turbda run``.

Example
-------
>>> from turbda_kit.progress import progress
>>> for cycle in progress(range(3), desc="cycling", enabled=False):
...     pass
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

_RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def process_rank() -> int:
    """Rank of this process from the launcher's environment (0 when not launched in parallel).

    Reads torchrun's ``RANK``, MPICH/Hydra's ``PMI_RANK``, Open MPI's
    ``OMPI_COMM_WORLD_RANK``, PMIx's ``PMIX_RANK`` and Slurm's ``SLURM_PROCID``, in that
    order, without initialising MPI.
    """
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


PROGRESS_MODES = ("widget", "terminal", "plain")
_JUPYTER_SERVERS = ("jupyter-lab", "jupyter-notebook", "jupyter-server", "jupyter_server",
                    "jupyterlab", "notebook.app", "nbclassic")


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _kernel_parent_command() -> str:
    """Command line of the process that started this Jupyter kernel ('' if unknown)."""
    parent = os.environ.get("JPY_PARENT_PID", "")
    if not parent.isdigit():
        return ""
    try:
        import psutil

        return " ".join(psutil.Process(int(parent)).cmdline())
    except Exception:  # gone, no permission, psutil missing: unknown
        return ""


def in_interactive_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel that a person is looking at (a kernel a
    Jupyter server started), as opposed to one papermill/nbclient/nbconvert drives."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    if os.environ.get("JPY_SESSION_NAME"):
        return True
    command = _kernel_parent_command()
    return any(name in command for name in _JUPYTER_SERVERS)


def progress_mode(stream: TextIO | None = None) -> str:
    """``"widget"``, ``"terminal"`` or ``"plain"``: how progress is shown here (see the
    module docstring for the rules)."""
    forced = os.environ.get("TURBDA_PROGRESS", "").strip().lower()
    if forced in PROGRESS_MODES:
        return forced
    if os.environ.get("TURBDA_PLAIN_PROGRESS"):
        return "plain"
    if in_interactive_notebook():
        return "widget" if importlib.util.find_spec("ipywidgets") is not None else "plain"
    return "terminal" if _is_tty(stream or sys.stdout) else "plain"


def _format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class PlainProgress:
    """Plain-line progress: ``desc: 12/300 (4%) 3.1 it/s, elapsed 4.0s, eta 1m33s``.

    Parameters
    ----------
    total : int or None
        Number of items expected, if known.
    desc : str
        Label printed at the start of each line.
    every_seconds : float
        Minimum wall time between two lines (the first and last are always printed).
    stream : TextIO
        Where lines go (default ``sys.stdout``, which papermill captures).
    """

    def __init__(self, total: int | None, desc: str, every_seconds: float = 10.0,
                 stream: TextIO | None = None):
        self.total = total
        self.desc = desc
        self.every_seconds = every_seconds
        self.stream = stream or sys.stdout
        self.count = 0
        self.start = time.monotonic()
        self._last_print = -float("inf")
        self.postfix = ""

    def set_postfix_str(self, text: str) -> None:
        """Text appended to the next lines (e.g. the current RMSE)."""
        self.postfix = text

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` items and print a line if enough time passed."""
        self.count += n
        now = time.monotonic()
        done = self.total is not None and self.count >= self.total
        if self.count == n or done or now - self._last_print >= self.every_seconds:
            self._print(now)

    def _print(self, now: float) -> None:
        self._last_print = now
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else float("nan")
        if self.total:
            pct = 100.0 * self.count / self.total
            eta = (self.total - self.count) / rate if rate and rate == rate else float("nan")
            line = (f"{self.desc}: {self.count}/{self.total} ({pct:.0f}%) {rate:.3g} it/s, "
                    f"elapsed {_format_seconds(elapsed)}, eta {_format_seconds(eta) if eta == eta else '?'}")
        else:
            line = f"{self.desc}: {self.count} {rate:.3g} it/s, elapsed {_format_seconds(elapsed)}"
        if self.postfix:
            line += f" [{self.postfix}]"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to release; present for tqdm compatibility."""


class _SilentProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str = "", every_seconds: float = 10.0,
                 enabled: bool | None = None, stream: TextIO | None = None):
    """A progress reporter with ``update(n)``, ``set_postfix_str(s)`` and ``close()``.

    Parameters
    ----------
    total : int or None
        Number of items expected.
    desc : str
        Label.
    every_seconds : float
        Interval between plain lines (see :func:`progress_mode`).
    enabled : bool or None
        ``None`` reports on rank 0 only; ``False`` never; ``True`` always.
    stream : TextIO or None
        Output stream; defaults to ``sys.stdout`` (plain) / ``sys.stderr`` (tqdm).
    """
    if enabled is None:
        enabled = process_rank() == 0
    if not enabled:
        return _SilentProgress()
    out = stream or sys.stdout
    mode = progress_mode(out)
    if mode == "widget":
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(total=total, desc=desc)
    if mode == "terminal":
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=out)
    return PlainProgress(total, desc, every_seconds, out)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             every_seconds: float = 10.0, enabled: bool | None = None,
             stream: TextIO | None = None) -> Iterator[T]:
    """Iterate over ``iterable`` while reporting progress (see :func:`progress_bar`)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar = progress_bar(total, desc, every_seconds, enabled, stream)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()
