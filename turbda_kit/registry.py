"""Named registries: how a preset's strings (``"sqg"``, ``"arctan"``, ``"letkf"``) find code.

One small class serves the three registries an experiment is assembled from — forecast
models (:mod:`turbda_kit.experiments.setups`), observation operators
(:mod:`turbda_kit.obs.operators`) and filters (:mod:`turbda_kit.filters.base`) — so a
new kind is added by one ``register_*`` call, never by another ``if`` branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import InputError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to entries that refuses unknown names with the known ones.

    Parameters
    ----------
    what : str
        What an entry is, for error messages (e.g. ``"filter"``).

    Examples
    --------
    >>> colours = Registry[int]("colour")
    >>> colours.register("red", 1)
    >>> colours.get("red")
    1
    >>> colours.get("blue")
    Traceback (most recent call last):
    ...
    turbda_kit.errors.InputError: unknown colour 'blue'; known: red
    """

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> None:
        """Add ``entry`` under ``name``.

        Raises
        ------
        InputError
            ``name`` is not a non-empty string, or is taken and ``replace`` is False.
        """
        if not isinstance(name, str) or not name:
            raise InputError(f"a {self.what} name must be a non-empty string, got {name!r}")
        if name in self._entries and not replace:
            raise InputError(f"a {self.what} called {name!r} is already registered; pass "
                             f"replace=True to override it")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The entry called ``name``; :class:`InputError` naming the known ones otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise InputError(f"unknown {self.what} {name!r}; known: "
                             f"{', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
