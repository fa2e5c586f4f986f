"""The structured access log: one JSON line a request, never a prompt or a credential."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

access = logging.getLogger("router.access")


def log_request(**fields: Any) -> None:
    record = {"ts": round(time.time(), 3), **fields}
    access.info(json.dumps(record, separators=(",", ":"), default=str))
