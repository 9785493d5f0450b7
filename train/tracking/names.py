"""MLflow's rules for keys, applied before anything reaches the server.

One rejected key fails a whole log_batch call, so every metric name YOLOv5 produces (per-class
columns carry arbitrary class names) is made valid here instead.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping

MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
# The server accepts word characters (Unicode), '/', '.', '-', ' ' and ':'; ':' is replaced too,
# as Windows clients reject it and users' queries already use the '_' spelling.
_INVALID = re.compile(r"[^\w/.\- ]")


def sanitize_key(name: str) -> str:
    key = _INVALID.sub("_", name.strip())
    segments = [s for s in key.split("/") if s not in ("", ".", "..")]  # no '//', './', '../', edge '/'
    return "/".join(segments)[:MAX_KEY_LENGTH] or "_"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, str]:
    """Nested config to {dotted.key: str(value)}, the shape MLflow params take."""
    flat: Dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{dotted}."))
        else:
            flat[sanitize_key(dotted)] = str(value)[:MAX_PARAM_VALUE_LENGTH]
    return flat


SYSTEM_METRICS_PREFIX = "system/"  # MLflow's system metrics: the machine's readings, not the training's results


def is_training_metric(key: str) -> bool:
    return not key.startswith(SYSTEM_METRICS_PREFIX)
