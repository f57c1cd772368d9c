"""A grid of settings on the command line: each field of a frozen dataclass becomes an
option taking one or more values, and every combination is one setting to measure
(the ``scripts/measure_*.py`` scripts)."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator, Sequence
from typing import Any


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def add_grid_arguments(parser: argparse.ArgumentParser, defaults: Any,
                       names: Sequence[str]) -> None:
    """``--<name>`` per field of ``defaults`` (a dataclass instance), ``nargs="+"``,
    defaulting to its value; booleans read 1/0, true/false or yes/no."""
    for name in names:
        value = getattr(defaults, name)
        kind = _flag if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, nargs="+",
                            default=[value])


def settings_grid(args: argparse.Namespace, cls: type, names: Sequence[str]) -> Iterator[Any]:
    """Every combination of the parsed values of ``names``, as ``cls`` instances."""
    for values in itertools.product(*(getattr(args, name) for name in names)):
        yield cls(**dict(zip(names, values, strict=True)))
