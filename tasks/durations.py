"""Training minutes as people write them (``10m``, ``90s``, ``1.5h``), read and written.

Below the search layer so that the flows' ``budget`` parameter (:mod:`tasks.run_options`)
is checked without importing the search that spends it (:mod:`tasks.search.spending`).
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)
_UNIT_MINUTES = {"s": 1 / 60, "sec": 1 / 60, "m": 1.0, "min": 1.0, "h": 60.0}


def parse_budget(text: str | float | int) -> float:
    """Minutes of training from ``10m``, ``90s``, ``1.5h`` or a plain number (minutes)."""
    try:
        return _minutes(text)
    except ValueError as error:
        raise ValueError(f"budget={text!r}: {error}") from None


def _minutes(text: str | float | int) -> float:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        minutes = float(text)
    else:
        match = _DURATION.match(str(text))
        if match is None:
            raise ValueError("expected training minutes as a number with an optional unit: "
                             "10m, 90s, 1.5h (a plain number is minutes)")
        minutes = float(match.group(1)) * _UNIT_MINUTES[(match.group(2) or "m").lower()]
    if not minutes > 0:
        raise ValueError("must be more than 0 minutes")
    return minutes


def check_budget(value: str | None) -> str | None:
    """Pydantic validator of the flows' ``budget`` parameter (kept as its text)."""
    if value is not None:
        _minutes(value)  # pydantic names the value in front of the message
    return value


def minutes_text(minutes: float) -> str:
    """``10 min``, ``1.5 min``, ``45 s``: a duration as people write it."""
    if minutes < 1:
        return f"{minutes * 60:.3g} s"
    return f"{minutes:.4g} min"
