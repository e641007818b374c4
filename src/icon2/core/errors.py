"""Errors a user can act on. Stages print them as one message and exit with status 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Icon2Error(Exception):
    """Base class: the message names the file, key or row and what was expected."""


class ParamsError(Icon2Error):
    """params.yaml is missing a key, has an unknown one, or a value out of range."""


class InputError(Icon2Error):
    """An input file (features, instructions, pairs, prompts) is unusable."""


class ModelError(Icon2Error):
    """The configured model cannot be found, loaded or used as a chat model."""


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn an Icon2Error into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Icon2Error as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def first_line(exc: BaseException) -> str:
    """An exception's first line (at most 200 characters), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
