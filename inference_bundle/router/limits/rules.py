"""Which counters a request counts against, and what it is expected to cost.

A cluster's ``limits`` (config/router/<deployment>.yaml) give every user, every group and
every model a counter, with overrides for named ones. A request counts against its user's,
its group's and its model's counters on that cluster, each only where some limit is set.
A caller in several groups is charged to one: the first (by name) that has its own limits
there, else the first of all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference_bundle.config.operations import operation
from inference_bundle.config.settings import LimitsSettings, LimitValues

LIMIT_FIELDS = tuple(LimitValues.model_fields)
RATE_FIELDS = ("requests_per_second", "requests_per_minute")
TOKEN_FIELDS = ("tokens_per_minute", "tokens_per_day", "tokens_per_month")
# A part of a message that is not text (an image, audio) is reserved as this many tokens.
NON_TEXT_PART_TOKENS = 1024
# What a chat template adds around each message, reserved on top of its text.
PER_MESSAGE_TOKENS = 8


@dataclass(frozen=True)
class Limit:
    field: str  # requests_per_second, ..., tokens_per_month
    value: int
    source: str  # where it is set: limits.clusters.<c>.users.<name>.<field>


@dataclass(frozen=True)
class Counter:
    """One user's, group's or model's counter on a cluster, with the limits set on it."""

    scope: str  # the key its records carry: "<cluster>:user:<name>"
    who: str  # for messages: "user alice@anl.gov on local"
    limits: tuple[Limit, ...]

    def has(self, *fields: str) -> bool:
        return any(limit.field in fields for limit in self.limits)


@dataclass(frozen=True)
class Cost:
    """A request's tokens: estimated before it is sent, or as the backend counted them."""

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


class Rules:
    """The counters of each (cluster, user, group, model), resolved once and kept."""

    def __init__(
        self, settings: LimitsSettings, model_name: Callable[[str, str], str] | None = None
    ) -> None:
        """``model_name(cluster, name)`` gives the served name of a model the config names
        (an alias included), so that overrides apply whatever name a user asks with."""
        self.settings = settings
        self._models = {
            cluster: {
                (model_name(cluster, name) if model_name else name): values
                for name, values in limits.models.items()
            }
            for cluster, limits in settings.clusters.items()
        }
        self._model_sources = {
            cluster: {
                (model_name(cluster, name) if model_name else name): name for name in limits.models
            }
            for cluster, limits in settings.clusters.items()
        }
        self._cache: dict[tuple[str, str, str, str], tuple[Counter, ...]] = {}

    @property
    def active(self) -> bool:
        """Whether any limit is set at all (else nothing is reserved)."""
        return bool(self.settings.clusters)

    def group_of(self, cluster: str, groups: frozenset[str]) -> str:
        """The group a caller's requests are charged to on ``cluster`` ("" for none)."""
        if not groups:
            return ""
        limits = self.settings.clusters.get(cluster)
        named = sorted(groups & set(limits.groups)) if limits else []
        return named[0] if named else sorted(groups)[0]

    def counters(self, cluster: str, user: str, group: str, model: str) -> tuple[Counter, ...]:
        key = (cluster, user, group, model)
        found = self._cache.get(key)
        if found is None:
            found = self._resolve(cluster, user, group, model)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _resolve(self, cluster: str, user: str, group: str, model: str) -> tuple[Counter, ...]:
        limits = self.settings.clusters.get(cluster)
        if limits is None:
            return ()
        base = f"limits.clusters.{cluster}"
        kinds: list[tuple[str, str, LimitValues, str, LimitValues | None, str]] = [
            ("user", user, limits.user, "users", limits.users.get(user), user),
            ("model", model, limits.model, "models", self._models[cluster].get(model), ""),
        ]
        if group:
            override = limits.groups.get(group)
            kinds.insert(1, ("group", group, limits.group, "groups", override, group))
        counters = []
        for kind, name, default, plural, override, key in kinds:
            source_key = key or self._model_sources[cluster].get(model, model)
            found = []
            for field in LIMIT_FIELDS:
                if override is not None and getattr(override, field) is not None:
                    value, source = getattr(override, field), f"{base}.{plural}.{source_key}"
                elif getattr(default, field) is not None:
                    value, source = getattr(default, field), f"{base}.{kind}"
                else:
                    continue
                found.append(Limit(field, int(value), f"{source}.{field}"))
            if found:
                counters.append(
                    Counter(f"{cluster}:{kind}:{name}", f"{kind} {name} on {cluster}", tuple(found))
                )
        return tuple(counters)


def estimate(path: str, body: dict[str, Any], settings: LimitsSettings) -> Cost:
    """What a request will cost, at most as far as can be told before the backend counts.

    The prompt: the text of the operation's prompt fields (``config.operations``), its UTF-8
    bytes / ``prompt_bytes_per_token``, plus a little per message for the chat template, and
    a fixed amount for each image or audio part. The completion, for an operation that
    generates: ``n`` times ``max_tokens`` (or ``max_completion_tokens``, or
    ``default_max_tokens``).
    """
    op = operation(path)
    prompt = _tokens([body.get(name) for name in op.prompt_fields], settings)
    if op.messages_field is not None:
        messages = body.get(op.messages_field)
        prompt += PER_MESSAGE_TOKENS * (len(messages) if isinstance(messages, list) else 1)
    if not op.generates:
        return Cost(prompt, 0)
    asked = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
    per_choice = _count(asked) or settings.default_max_tokens
    return Cost(prompt, per_choice * (_count(body.get("n")) or 1))


def _count(value: Any) -> int | None:
    """A positive whole number, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _tokens(value: Any, settings: LimitsSettings) -> int:
    return math.ceil(_token_count(value, settings.prompt_bytes_per_token))


def _token_count(value: Any, bytes_per_token: float) -> float:
    """Text as its UTF-8 bytes / bytes_per_token; an image or audio part as a fixed count; a
    number as one token (a pre-tokenized prompt)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace")) / bytes_per_token
    if isinstance(value, list):
        return sum(_token_count(item, bytes_per_token) for item in value)
    if isinstance(value, dict):
        if value.get("type") in ("image_url", "input_image", "input_audio", "image", "video_url"):
            return NON_TEXT_PART_TOKENS
        return sum(_token_count(item, bytes_per_token) for item in value.values())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return 1
    return 0
