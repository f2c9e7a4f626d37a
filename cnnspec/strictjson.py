"""JSON as the standard defines it: no Infinity, no NaN (other tools' parsers refuse them)."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (an infinite best-so-far, a diverged loss) as
    None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def strict_json(value: Any, **options: Any) -> str:
    """Standard JSON of ``value`` (see ``finite``); ``options`` as for json.dumps."""
    return json.dumps(finite(value), allow_nan=False, **options)
