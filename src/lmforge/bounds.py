"""Declared valid ranges for numeric options and choices for named ones, checked before any work.

A config dataclass lists its ranges in a `BOUNDS` class attribute and calls `check_fields` from
`__post_init__`, so a recipe from YAML, an option on the command line and a direct Python call
are held to the same limits; a `Literal[...]` field's choices come from its type. A value out of
range is a one-line error naming the option — never a run that quietly does something else
(`--dedup.rows 0` once marked every document a near duplicate).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class Bound:
    """An interval of admitted numbers; for a dict-valued field it bounds the values (and `keys`)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    keys: Bound | None = None

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def at_least(low: float) -> Bound:
    return Bound(low=low)


def above(low: float) -> Bound:
    return Bound(low=low, low_open=True)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False, keys: Bound | None = None) -> Bound:
    return Bound(low=low, high=high, low_open=low_open, high_open=high_open, keys=keys)


def check_value(name: str, value: object, bound: Bound) -> None:
    """Raise a one-line error unless `value` (a number, or a dict of numbers) lies within `bound`."""
    if value is None:  # None means "off" or "default" wherever a field admits it
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if bound.keys is not None:
                check_value(f"{name} key", key, bound.keys)
            check_value(f"{name}[{key}]", item, dataclasses.replace(bound, keys=None))
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LmforgeError(f"{name} must be a number {bound}, got {value!r}")
    if not bound.admits(value):
        raise LmforgeError(f"{name} must be {bound}, got {value!r}")


def _choices(hint: object) -> tuple | None:
    """The admitted values of a `Literal[...]` (or `Literal[...] | None`) type, else None."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    for argument in typing.get_args(hint):
        if typing.get_origin(argument) is typing.Literal:
            return typing.get_args(argument) + (None,)
    return None


def check_fields(instance: object, name_format: str | Callable[[str], str]) -> None:
    """Every field of a config dataclass within its declared `BOUNDS` and among its `Literal`
    choices. `name_format` turns a field name into the option users wrote: `"--dedup.{}"`."""
    name_of = name_format.format if isinstance(name_format, str) else name_format
    bounds: dict[str, Bound] = getattr(type(instance), "BOUNDS", {})
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        choices = _choices(hints.get(field.name))
        if choices is not None and value not in choices:
            valid = ", ".join(str(choice) for choice in choices if choice is not None)
            raise LmforgeError(f"{name_of(field.name)} must be one of {valid}; got {value!r}")
        if field.name in bounds:
            check_value(name_of(field.name), value, bounds[field.name])
