"""Fair sharing on the request path: admit (reserve) before dispatch, settle after the answer.

``admit`` runs on the event loop: with SQLite the ledger is called in place (tens of
microseconds, no thread hop); with PostgreSQL in a worker thread. A refusal is OpenAI's
429 with ``Retry-After``; a database that does not answer is a 503 and nothing is sent.
``settle`` only queues: a background task writes settlements in batches, and keeps those
the database refused until it answers again (the records' keys make a retry harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread

from inference_bundle.config.settings import LimitsSettings
from inference_bundle.router.errors import APIError
from inference_bundle.router.limits.ledger import Ledger, Refusal, Settlement
from inference_bundle.router.limits.rules import TOKEN_FIELDS, Cost, Counter, Rules, estimate
from inference_bundle.router.store.database import StoreUnavailable

log = logging.getLogger("router.limits")
T = TypeVar("T")

FLUSH_EVERY_S = 0.05
FLUSH_MAX = 512
RETRY_EVERY_S = 1.0
PRUNE_EVERY_S = 60.0


@dataclass(frozen=True)
class Ticket:
    """An admitted request: who it is charged to, and what it reserved."""

    request_id: str
    user: str
    group: str
    model: str
    cluster: str
    operation: str
    cost: Cost | None  # None: nothing was reserved (no limits apply)
    counters: tuple[Counter, ...]
    guessed_prompt: int = 0  # the prompt's size before calibration (estimate())

    @property
    def token_scopes(self) -> tuple[str, ...]:
        return tuple(c.scope for c in self.counters if c.has(*TOKEN_FIELDS))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


class Limiter:
    def __init__(
        self,
        ledger: Ledger,
        settings: LimitsSettings,
        hold_s: float,
        keep_days: int,
        model_name: Callable[[str, str], str] | None = None,
        on_tokens: Callable[[Ticket, int, int], None] | None = None,
    ) -> None:
        """``hold_s``: how long a reservation lasts if its router dies before settling it;
        ``on_tokens(ticket, prompt, completion)`` counts tokens (Prometheus)."""
        self.ledger = ledger
        self.hold_s = hold_s
        self.keep_days = keep_days
        self._model_name = model_name
        self.rules = Rules(settings, model_name)
        self._on_tokens = on_tokens
        self._queue: list[Settlement] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = 0.0
        self.unsettled_since: float | None = None  # when the database last refused them
        self.calibration = PromptCalibration()

    def update(self, settings: LimitsSettings) -> None:
        """New limits (the config file changed): they apply from the next request."""
        self.rules = Rules(settings, self._model_name)

    async def call(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on the ledger: in place for SQLite, in a thread for PostgreSQL."""
        if self.ledger.db.remote:
            return await anyio.to_thread.run_sync(work, *args)
        return work(*args)

    async def admit(
        self,
        request_id: str,
        user: str,
        groups: frozenset[str],
        cluster: str,
        model: str,
        operation: str,
        body: dict[str, Any],
    ) -> Ticket:
        """The request's ticket, its cost held on its counters; APIError 429 or 503."""
        rules = self.rules
        group = rules.group_of(cluster, groups)
        counters = rules.counters(cluster, user, group, model) if rules.active else ()
        guess = estimate(operation, body, rules.settings)
        cost = None
        if counters:
            cost = Cost(self.calibration.prompt(model, guess.prompt), guess.completion)
            refusal = await self.call(self.ledger.reserve, request_id, counters, cost, self.hold_s)
            if refusal is not None:
                raise too_many(refusal)
        return Ticket(
            request_id, user, group, model, cluster, operation, cost, counters, guess.prompt
        )

    def settle(
        self,
        ticket: Ticket,
        status: int,
        usage: Usage | None,
        latency_s: float | None,
        via: str,
        estimated: bool = False,
    ) -> None:
        """Queue the request's record and charge: the tokens the backend reported; none for
        an error; the reservation when the answer was cut (or the client left, 499) before
        the backend counted."""
        if usage is None and ticket.cost is not None and (status < 400 or status == 499):
            usage = Usage(ticket.cost.prompt, ticket.cost.completion)
            estimated = True
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        if usage is not None and not estimated:
            self.calibration.learn(ticket.model, ticket.guessed_prompt, prompt)
        if self._on_tokens is not None and (prompt or completion) and not estimated:
            self._on_tokens(ticket, prompt, completion)
        self.enqueue(
            Settlement(
                request_id=ticket.request_id,
                at=time.time(),
                user=ticket.user,
                group=ticket.group,
                model=ticket.model,
                cluster=ticket.cluster,
                operation=ticket.operation,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=None if latency_s is None else round(latency_s * 1000, 2),
                status=status,
                via=via,
                estimated=estimated,
                scopes=ticket.token_scopes,
            )
        )

    def enqueue(self, settlement: Settlement) -> None:
        self._queue.append(settlement)
        if len(self._queue) >= FLUSH_MAX:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def stop(self, within_s: float = 5.0) -> None:
        """Stop the background writer after a last flush (given up after ``within_s``)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        deadline = time.monotonic() + within_s
        while self._queue and time.monotonic() < deadline:
            if not await self.flush():
                await asyncio.sleep(RETRY_EVERY_S)
        if self._queue:
            log.error(
                "limits: %d usage records could not be written (the database is not "
                "answering); their holds lapse on their own",
                len(self._queue),
            )

    async def flush(self) -> bool:
        """Write what is queued; False (all of it kept for later) if the database refused."""
        if not self._queue:
            return True
        batch, self._queue = self._queue, []
        try:
            await self.call(self.ledger.settle, batch)
        except StoreUnavailable:
            self._queue = batch + self._queue
            if self.unsettled_since is None:
                self.unsettled_since = time.time()
            return False
        except Exception:
            log.exception("limits: usage records could not be written; kept to try again")
            self._queue = batch + self._queue
            return False
        self.unsettled_since = None
        return True

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY_S)
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(RETRY_EVERY_S)
                continue
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
                self._pruned_at = time.monotonic()
                with contextlib.suppress(StoreUnavailable):
                    await self.call(self.ledger.prune, self.keep_days)

    @property
    def pending(self) -> int:
        return len(self._queue)


class PromptCalibration:
    """How many tokens a model's tokenizer really makes of what ``estimate`` guessed.

    The guess counts bytes; a model's tokenizer and chat template may make more tokens of
    them (a small vocabulary, a long template) or fewer. Each answer's reported prompt tokens
    teach the ratio: a larger one is taken at once (a reservation too small lets a budget
    be overshot), a smaller one only slowly (a burst of short prompts does not undo it).
    """

    FLOOR, CEILING = 0.25, 16.0

    def __init__(self) -> None:
        self._scale: dict[str, float] = {}

    def prompt(self, model: str, guessed: int) -> int:
        return math.ceil(guessed * self._scale.get(model, 1.0))

    def learn(self, model: str, guessed: int, reported: int) -> None:
        if guessed <= 0 or reported <= 0:
            return
        ratio = min(self.CEILING, max(self.FLOOR, reported / guessed))
        scale = self._scale.get(model, 1.0)
        self._scale[model] = ratio if ratio > scale else scale * 0.98 + ratio * 0.02


def too_many(refusal: Refusal) -> APIError:
    """The 429 for a refusal, in OpenAI's shape, naming the limit and where it is set."""
    limit = refusal.limit
    tokens = limit.field in TOKEN_FIELDS
    budget = limit.field in ("tokens_per_day", "tokens_per_month")
    unit = "tokens" if tokens else "requests"
    where = f"{limit.field} = {limit.value} for {refusal.counter.who} (set in {limit.source})"
    headers = {"X-RateLimit-Limit": str(limit.value)}
    if refusal.retry_after_s is None:
        message = (
            f"This request alone may use {refusal.asked} tokens, more than {where}: ask for "
            "fewer max_tokens or send less text."
        )
    else:
        retry = max(1, math.ceil(refusal.retry_after_s))
        headers["Retry-After"] = str(retry)
        used = f"{refusal.used} {unit} counted now (requests in flight included)"
        message = (
            f"{'Token budget spent' if budget else 'Rate limit reached'}: {where}; {used}. "
            f"Retry after {retry} s."
        )
    return APIError(
        429,
        message,
        type="insufficient_quota" if budget else unit,
        code="insufficient_quota" if budget else "rate_limit_exceeded",
        headers=headers,
        extra={"limit": limit.field, "scope": refusal.counter.who},
    )
