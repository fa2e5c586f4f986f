"""The operations the router serves, one record each: everything known of an operation.

An operation is what a server answers at one path (``/v1/chat/completions``, ``/tokenize``).
Its record says which model kinds and frameworks answer it, how its body is read and
checked, what it may cost (for limits), whether its stream carries the usage the router
charges, how a whole answer is replayed as its stream, and whether batch lines may use it.
The route table, the body checks, the limits, the streams and the batch checks read the
record; none of them names a path. A new operation is one ``register`` call here (and, for
a new framework's path, the node side's list, which a test holds to this one both ways).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from inference_bundle.config.kinds import Framework, Kind
from inference_bundle.config.operation_bodies import (
    ChatBody,
    CompletionBody,
    EmbeddingBody,
    MessagesBody,
    RequestBody,
    RerankBody,
    ResponsesBody,
    score_pairs,
)

# How a whole answer is replayed when its stream cannot ride a connection: OpenAI's chat or
# text chunks closed by [DONE], or the named events of Responses and Messages.
StreamStyle = Literal["chat_chunks", "text_chunks", "responses", "messages"]
# A check beyond the body's model: (param, sentence) for a 400, or None.
BodyCheck = Callable[[dict[str, Any]], tuple[str, str] | None]
# What other operations read as their input, for limits (embeddings' input, rerank's query
# and documents, score's texts, the tokenizer's prompt or messages).
INPUT_FIELDS = ("input", "text", "query", "documents", "text_1", "text_2", "queries", "prompt",
                "messages")  # fmt: skip
_GENERATING_KINDS: frozenset[Kind] = frozenset({"chat", "vision", "base"})
_PREAMBLE = ("system", "instructions")  # Messages' system prompt, Responses' instructions
MODELS_PATH = "/v1/models"  # a GET every framework serves; not an operation users call


@dataclass(frozen=True)
class Operation:
    """One operation, as every part of the router treats it."""

    path: str  # where the server answers it, and the record's key
    kinds: frozenset[Kind]  # the model kinds that answer it
    frameworks: frozenset[Framework]  # the frameworks that serve it
    check: type[RequestBody] = RequestBody  # the body's fields
    also: BodyCheck | None = None  # a check across fields
    body: Literal["json", "multipart"] = "json"
    prompt_fields: tuple[str, ...] = INPUT_FIELDS  # whose text is the prompt, for limits
    messages_field: str | None = None  # a list of messages, each templated (a few tokens)
    generates: bool = False  # completion tokens: n times max_tokens, for limits
    usage_in_stream: bool = False  # the router asks for the stream's usage, to charge it
    stream: StreamStyle = "text_chunks"
    batch: bool = False  # batch lines may use it
    cache_salt: bool = False  # vLLM takes a cache_salt: the router keeps prefix caches private

    @property
    def user_path(self) -> str:
        """The URL's tail after a base URL's /v1/: "chat/completions", and "tokenize" for
        the tokenizer that vLLM serves at its root."""
        return self.path.removeprefix("/v1/").lstrip("/")


_REGISTRY: dict[str, Operation] = {}
# user_path -> the first operation registered at it: each request looks its operation up.
_BY_USER_PATH: dict[str, Operation] = {}


def register(operation: Operation) -> None:
    """Add (or replace) an operation; every part of the router sees it at once."""
    _REGISTRY[operation.path] = operation
    _index()


def unregister(path: str) -> None:
    """Take an operation out (a test's own, after the test)."""
    _REGISTRY.pop(path, None)
    _index()


def _index() -> None:
    index: dict[str, Operation] = {}
    for op in _REGISTRY.values():
        index.setdefault(op.user_path, op)
    _BY_USER_PATH.clear()
    _BY_USER_PATH.update(index)


def operation(path: str) -> Operation:
    """The record of ``path``; KeyError for a path no operation has."""
    return _REGISTRY[path]


def operations() -> Iterator[Operation]:
    """Every operation, in the order registered."""
    return iter(list(_REGISTRY.values()))


def by_user_path(tail: str) -> Operation | None:
    """The operation users call at ``tail`` after a base URL's /v1/, if any."""
    return _BY_USER_PATH.get(tail)


def served_paths(framework: str, kind: str | None = None) -> tuple[str, ...]:
    """The paths a framework serves (for a model of ``kind``, when given)."""
    return tuple(
        op.path
        for op in operations()
        if framework in op.frameworks and (kind is None or kind in op.kinds)
    )


def batch_paths(kind: str | None = None) -> tuple[str, ...]:
    """The paths a batch may name (for a model of ``kind``, when given)."""
    return tuple(op.path for op in operations() if op.batch and (kind is None or kind in op.kinds))


def _generation(path: str, **fields: Any) -> Operation:
    return Operation(path, _GENERATING_KINDS, frozenset({"vllm"}), **fields)


for _operation in (
    _generation(
        "/v1/chat/completions",
        check=ChatBody,
        prompt_fields=("messages", *_PREAMBLE),
        messages_field="messages",
        generates=True,
        usage_in_stream=True,
        stream="chat_chunks",
        batch=True,
        cache_salt=True,
    ),
    _generation(
        "/v1/completions",
        check=CompletionBody,
        prompt_fields=("prompt",),
        generates=True,
        usage_in_stream=True,
        batch=True,
        cache_salt=True,
    ),
    _generation(
        "/v1/responses",
        check=ResponsesBody,
        prompt_fields=("input", *_PREAMBLE),
        messages_field="input",
        generates=True,
        stream="responses",
        cache_salt=True,
    ),
    _generation(
        "/v1/messages",
        check=MessagesBody,
        prompt_fields=("messages", *_PREAMBLE),
        messages_field="messages",
        generates=True,
        stream="messages",
        cache_salt=True,
    ),
    _generation("/tokenize"),
    _generation("/detokenize"),
    Operation(
        "/v1/embeddings",
        frozenset({"embedding"}),
        frozenset({"vllm", "infinity"}),
        check=EmbeddingBody,
        batch=True,
    ),
    Operation(
        "/v1/rerank", frozenset({"rerank"}), frozenset({"vllm", "infinity"}), check=RerankBody
    ),
    Operation("/v1/score", frozenset({"rerank"}), frozenset({"vllm"}), also=score_pairs),
):
    register(_operation)
