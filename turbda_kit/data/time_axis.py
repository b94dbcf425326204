"""The time axis of nature runs: CF-decodable on disk, seconds in memory.

A nature run counts time in seconds from its *time zero*, the first output (the spun-up
state). On disk its ``time`` coordinate holds those seconds as float64 with the CF units
``"seconds since 2000-01-01 00:00:00"`` and the ``proleptic_gregorian`` calendar, so
xarray and every CF reader decode it to dates. The date is nominal: the SQG model has no
calendar, and 2000-01-01 00:00 simply stands for time zero. A day of the run is
``floor(seconds / 86400)``, which is the calendar day since 2000-01-01 as well.

Files written before this encoding carry ``units = "s"`` (which xarray leaves as plain
numbers). Both read back as the same seconds through :func:`time_seconds` (a Dataset or
its ``time``) and :func:`time_in_seconds` (raw values).

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset(coords={"time": ("time", [0.0, 43200.0], time_attrs("time"))})
>>> decoded = xr.decode_cf(ds)
>>> str(decoded.time.values[1])[:19]
'2000-01-01T12:00:00'
>>> time_seconds(decoded).tolist(), time_seconds(ds).tolist()
([0.0, 43200.0], [0.0, 43200.0])
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["TIME_CALENDAR", "TIME_REFERENCE", "TIME_UNITS", "SECOND_UNITS", "time_attrs",
           "seconds_from_stored", "time_in_seconds", "time_seconds"]

TIME_REFERENCE = "2000-01-01 00:00:00"
"""The nominal date of time zero (the first output) of every nature run the kit writes."""
TIME_UNITS = f"seconds since {TIME_REFERENCE}"
TIME_CALENDAR = "proleptic_gregorian"
SECOND_UNITS = frozenset({"s", "sec", "secs", "second", "seconds"})
"""Units of plain seconds, as files written before the CF encoding carry them."""

# Calendars in which every date after 1582 is the proleptic Gregorian date numpy uses.
_GREGORIAN = frozenset({"standard", "gregorian", "proleptic_gregorian"})
_UNIT_SECONDS = {**dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
                 **dict.fromkeys(("min", "mins", "minute", "minutes"), 60.0),
                 **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
                 **dict.fromkeys(("d", "day", "days"), 86400.0)}
_SINCE = re.compile(r"^\s*(\w+)\s+since\s+(.+?)\s*$", re.IGNORECASE)


def time_attrs(long_name: str, axis: bool = True) -> dict[str, str]:
    """CF attributes of a nature run's ``time`` coordinate (float64 seconds since time zero).

    Parameters
    ----------
    long_name : str
        What time zero is, e.g. ``"time since the first output (the spun-up state)"``.
    axis : bool
        Add ``axis = "T"``.
    """
    attrs = {"units": TIME_UNITS, "calendar": TIME_CALENDAR, "standard_name": "time",
             "long_name": long_name}
    if axis:
        attrs["axis"] = "T"
    return attrs


def _since(units: str) -> tuple[float, str] | None:
    """``(seconds per unit, reference date)`` of ``"<unit> since <date>"``, else None."""
    match = _SINCE.match(str(units))
    if match is None or match.group(1).lower() not in _UNIT_SECONDS:
        return None
    return _UNIT_SECONDS[match.group(1).lower()], match.group(2)


def seconds_from_stored(values: np.ndarray, units: Any,
                        calendar: Any = None) -> np.ndarray | None:
    """Stored (undecoded) time values as float64 seconds since the reference, or None.

    Parameters
    ----------
    values : numpy.ndarray
        Numbers as stored in the file.
    units : str
        Their ``units`` attribute: plain seconds (``"s"``, older nature runs) or
        ``"<seconds|minutes|hours|days> since <date>"`` (CF).
    calendar : str or None
        The ``calendar`` attribute; only Gregorian ones are understood here.

    Returns
    -------
    numpy.ndarray or None
        None when the units (or calendar) are not one of those forms; a reader should then
        let xarray decode the axis.
    """
    text = str(units).strip()
    if calendar is not None and str(calendar).strip().lower() not in _GREGORIAN:
        return None
    if text.lower() in SECOND_UNITS:
        return np.asarray(values, dtype=np.float64)
    since = _since(text)
    if since is None:
        return None
    factor = since[0]
    seconds = np.asarray(values, dtype=np.float64)
    return seconds if factor == 1.0 else seconds * factor


def _reference_date(units: str) -> np.datetime64 | None:
    since = _since(units)
    if since is None:
        return None
    text = since[1]
    try:
        with warnings.catch_warnings():  # numpy only warns about a time zone: pandas below
            warnings.simplefilter("error")
            return np.datetime64(text.replace(" ", "T", 1), "ns")
    except (ValueError, UserWarning, DeprecationWarning):
        pass
    try:  # time zones, unpadded fields, ...: pandas is loaded whenever xarray decoded dates
        import pandas as pd

        stamp = pd.Timestamp(text)
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        return stamp.to_datetime64()
    except Exception:  # noqa: BLE001 - an unreadable reference: the caller falls back
        return None


def time_in_seconds(values: np.ndarray, units: Any = None) -> np.ndarray:
    """A time coordinate's values as float64 seconds since the run's time zero.

    Parameters
    ----------
    values : numpy.ndarray
        Numbers (seconds, or as ``units`` say), ``timedelta64``, or ``datetime64`` (as
        xarray decodes CF dates).
    units : str or None
        The CF units the values were decoded from (xarray keeps them in ``.encoding``)
        or are stored in. For dates, time zero is the reference date of these units; the
        first value when they are unknown.

    Returns
    -------
    numpy.ndarray
        float64 seconds.
    """
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.timedelta64):
        return values / np.timedelta64(1, "s")
    if np.issubdtype(values.dtype, np.datetime64):
        reference = _reference_date(units) if units is not None else None
        if reference is None:
            reference = values[0] if values.size else np.datetime64(0, "s")
        return (values - reference) / np.timedelta64(1, "s")
    if units is not None:
        seconds = seconds_from_stored(values, units)
        if seconds is not None:
            return seconds
    return values.astype(np.float64)


def time_seconds(data: Any) -> np.ndarray:
    """Seconds since time zero of a nature run's ``time``, for old and new encodings.

    Parameters
    ----------
    data : xarray.Dataset or xarray.DataArray
        A nature run (or any object with a ``time`` coordinate), or the ``time``
        coordinate itself, decoded by xarray or not.

    Returns
    -------
    numpy.ndarray
        float64 seconds, shape ``(n_times,)``.

    Raises
    ------
    InputError
        When ``data`` has no ``time``.

    Examples
    --------
    >>> from turbda_kit.io import open_dataset                      # doctest: +SKIP
    >>> nature = open_dataset("nature_sqg.nc")                      # doctest: +SKIP
    >>> hours_per_output = float(np.diff(time_seconds(nature))[0]) / 3600.0  # doctest: +SKIP
    """
    time = data if getattr(data, "name", None) == "time" else None
    if time is None:
        try:
            time = data["time"]
        except (KeyError, TypeError) as err:
            raise InputError(f"{type(data).__name__} has no 'time' coordinate: give a nature "
                             "run (theta with dims time, z, y, x)") from err
    units = time.encoding.get("units") or time.attrs.get("units")
    return time_in_seconds(time.values, units)
