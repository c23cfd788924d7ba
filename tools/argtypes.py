"""Argument types: a bad value is one argparse usage error line (exit status 2) saying what is allowed.

    parser.add_argument("--loss", type=bounded(float, 0.0, 1.0, "loss must be a probability from 0 up to "
                                              "(not including) 1", high_open=True))
    parser.add_argument("name", type=checked(validate_client_name))

Light to import (argparse only), like tools.netargs.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def bounded(kind: type, low: float, high: float, what: str, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: `kind` (int or float) from `low` to `high` (without an end marked open); otherwise the
    error "<what>, got '<text>'". NaN is never in range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        in_range = (value is not None and low <= value <= high and not (low_open and value == low)
                    and not (high_open and value == high))
        if not in_range:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value
    return parse


def checked(validate: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a validator that raises ValueError saying what is wrong (its message is kept, where
    argparse would print only "invalid value")."""
    def parse(text: str) -> T:
        try:
            return validate(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = getattr(validate, "__name__", "value")
    return parse
