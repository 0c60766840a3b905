"""One way to turn configs, metrics and records into plain JSON values (the only copy)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)  # paths, enums, anything else: its text


def jsonable(value: Any, sort_keys: bool = False) -> Any:
    """``value`` as JSON gives it back: tuples become lists, NumPy numbers Python numbers, keys strings,
    anything else its ``str``. ``sort_keys`` gives a canonical form (for hashing)."""
    return json.loads(json.dumps(value, sort_keys=sort_keys, default=_default))
