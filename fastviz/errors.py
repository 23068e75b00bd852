"""Exceptions raised by fastviz for bad input.

Every error that a user can cause with their input (a file, a shape, a name) derives from
:class:`FastvizError`, so the command line can report it as one readable line. They also derive
from the built-in class a Python user would expect (``ValueError``, ``FileNotFoundError``,
``LookupError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["FastvizError", "InputError", "InputFileNotFoundError", "OutOfBudgetError", "UnknownNameError",
           "fraction", "positive_number"]


class FastvizError(Exception):
    """Base class of the errors fastviz raises for bad input."""


class InputError(FastvizError, ValueError):
    """An input has the wrong shape, dtype, value or content (a corrupt file, say)."""


class InputFileNotFoundError(FastvizError, FileNotFoundError):
    """An input file or folder does not exist."""


class UnknownNameError(FastvizError, LookupError):
    """A model, method or layer name that fastviz does not know."""


class OutOfBudgetError(FastvizError, MemoryError):
    """Out of memory even with one row per forward pass: the budget or the device is too small."""


def positive_number(name: str, value: object) -> float:
    """``value`` as a float, checked to be a finite real number ``> 0`` (not a bool).

    Raises
    ------
    InputError
        Naming ``name`` and the value given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number > 0, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def fraction(name: str, value: object, what: str = "") -> float:
    """``value`` as a float in ``(0, 1]`` (a real number, not a bool).

    Raises
    ------
    InputError
        Naming ``name`` (and ``what`` it is, if given) and the value given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        about = f" ({what})" if what else ""
        raise InputError(f"{name} must be a number in (0, 1]{about}, got {value!r}")
    return float(value)
