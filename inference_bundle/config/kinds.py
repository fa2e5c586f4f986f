"""The serving frameworks' and the model kinds' names, written once."""

from __future__ import annotations

from typing import Literal

Framework = Literal["vllm", "infinity"]
Kind = Literal["chat", "vision", "embedding", "rerank", "base"]
