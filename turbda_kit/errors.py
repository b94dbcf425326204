"""Exception types shared across the kit.

Every error raised at an API boundary says what was wrong and how to fix it; these
classes let callers (and the CLI) tell input mistakes from numerical failures.
"""


class TurbdaError(Exception):
    """Base class of the kit's own errors."""


class InputError(TurbdaError, ValueError):
    """A parameter or input has the wrong value, shape, type or content."""


class DivergenceError(TurbdaError, RuntimeError):
    """A run produced NaN/inf or blew past a threshold; the last good state was saved.

    Attributes
    ----------
    saved_path : str or None
        Where the last good state was written, if anywhere.
    """

    def __init__(self, message: str, saved_path: str | None = None):
        super().__init__(message)
        self.saved_path = saved_path
