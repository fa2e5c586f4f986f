"""Batch lines draw on the same budgets as requests: charged as they complete.

The job appends each answered line to the batch's output file; the router reads what was
appended since the offset it last charged to (kept in the batch's row, moved in the same
transaction that charges), and records each line as a request of the batch's owner and
group (``<batch id>:<custom_id>``, so a line is never charged twice). A batch whose day or
month budget is spent is paused (``node_runtime.batch_files.request_pause``): its job ends
after the lines in flight, the node is released, and the batch is submitted again once the
budget is back (raised in the config, or a new day or month).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from node_runtime.batch_files import OUTPUT, open_regular, private_dir

from inference_bundle.router.batches.store import BatchRecord, BatchStore
from inference_bundle.router.limits.counter_state import Refusal
from inference_bundle.router.limits.ledger import Settlement
from inference_bundle.router.limits.limiter import Limiter
from inference_bundle.router.limits.rules import TOKEN_FIELDS, Counter

log = logging.getLogger("router.batches")
# At most this much output is read a pass (the rest on the next one).
READ_AT_MOST = 16 * 1024 * 1024


class BatchCharger:
    def __init__(self, store: BatchStore, limiter: Limiter) -> None:
        self.store = store
        self.limiter = limiter

    def counters(self, batch: BatchRecord) -> tuple[Counter, ...]:
        rules = self.limiter.rules
        if not rules.active:
            return ()
        return rules.counters(batch.cluster, batch.owner, batch.group, batch.model)

    def charge(self, batch: BatchRecord) -> bool:
        """Charge the lines answered since the last pass (at most READ_AT_MOST bytes of
        them); whether there were any."""
        offset = self.store.charged_bytes(batch.id)
        read = _read_from(os.path.dirname(batch.input_path), offset)
        if read is None or read[0] == offset:
            return False
        end, raw_lines = read
        counters = self.counters(batch)
        scopes = tuple(c.scope for c in counters if c.has(*TOKEN_FIELDS))
        lines = [
            settlement
            for raw in raw_lines
            if (settlement := _settlement(batch, raw, scopes)) is not None
        ]
        # False when another router charged these lines meanwhile.
        return self.limiter.ledger.charge_batch(batch.id, offset, end, lines)

    def charge_all(self, batch: BatchRecord) -> None:
        """Charge every line not charged yet (a batch that ended)."""
        while self.charge(batch):
            pass

    def spent(self, batch: BatchRecord) -> Refusal | None:
        """The day or month budget of the batch's owner, group or model that is spent."""
        counters = self.counters(batch)
        return self.limiter.ledger.exhausted(counters) if counters else None


def pause_note(refusal: Refusal) -> dict[str, Any]:
    """What a paused batch says about why, and until when at the latest."""
    limit = refusal.limit
    retry = refusal.retry_after_s or 0
    return {
        "reason": f"the {limit.field} budget of {refusal.counter.who} is spent "
        f"({refusal.used} of {limit.value} tokens; set in {limit.source}); the batch goes "
        "on when it is raised or renewed",
        "limit": limit.field,
        "since": int(time.time()),
        "renews_at": int(time.time() + retry),
    }


def _read_from(folder: str, offset: int) -> tuple[int, list[bytes]] | None:
    """The whole lines of the output after ``offset``, and the offset after them."""
    try:
        with private_dir(folder) as dir_fd, open_regular(dir_fd, OUTPUT) as handle:
            handle.seek(offset)
            data = handle.read(READ_AT_MOST)
    except OSError:
        return None
    whole = data[: data.rfind(b"\n") + 1]
    return offset + len(whole), whole.splitlines()


def _settlement(batch: BatchRecord, raw: bytes, scopes: tuple[str, ...]) -> Settlement | None:
    try:
        line = json.loads(raw)
        custom_id = str(line["custom_id"])
        response = line.get("response") or {}
        body = response.get("body") or {}
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        status = int(response.get("status_code") or 0)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        log.warning("batch %s: an output line could not be read for charging", batch.id)
        return None
    return Settlement(
        request_id=f"{batch.id}:{custom_id}",
        at=time.time(),
        user=batch.owner,
        group=batch.group,
        model=batch.model,
        cluster=batch.cluster,
        operation=batch.endpoint or "batch",
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=None,
        status=status,
        via="batch",
        scopes=scopes,
    )
