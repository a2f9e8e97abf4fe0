"""Boundary checks that raise a ``ValueError`` naming the field, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _fmt(value: Any) -> str:
    return repr(value)


def require_positive(field: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` must be a finite number > 0 (or >= 0 with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{field}={_fmt(value)} is invalid; expected {expected}")
    return value


def require_int(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` must be an int within [minimum, maximum]."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        bounds = []
        if minimum is not None:
            bounds.append(f">= {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        raise ValueError(f"{field}={_fmt(value)} is invalid; expected an integer {' and '.join(bounds)}".rstrip())
    return value


def require_fraction(field: str, value: float, *, inclusive_high: bool = False, inclusive_low: bool = False) -> float:
    """``value`` must lie in (0, 1); ``inclusive_low`` / ``inclusive_high`` also allow 0 / 1."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0 <= value if inclusive_low else 0 < value) and (value <= 1 if inclusive_high else value < 1)
    if not ok:
        rng = ("[" if inclusive_low else "(") + "0, 1" + ("]" if inclusive_high else ")")
        raise ValueError(f"{field}={_fmt(value)} is invalid; expected a number in {rng}")
    return value


def require_bool(field: str, value: Any) -> bool:
    """``value`` must be ``True`` or ``False`` (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}={_fmt(value)} is invalid; expected True or False")
    return value


def require_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` must be one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ValueError(f"{field}={_fmt(value)} is invalid; expected one of {', '.join(map(repr, options))}")
    return value
