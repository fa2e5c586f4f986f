"""Streamed answers: the server's own events as they come, or a whole answer as events.

A stream on a connected model passes the server's events through as they come (its status
too, when it refuses the request); otherwise the response starts at once, says the model's
state in SSE comments while the model starts, then streams (``router.dispatch``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from inference_bundle.config.operations import operation
from inference_bundle.router.api import sse_chunks, sse_named_events
from inference_bundle.router.api.records import (
    CLIENT_CLOSED,
    answer_body,
    record,
    usage_fields,
    usage_of_fields,
)
from inference_bundle.router.api.request_context import RequestContext
from inference_bundle.router.dataplane.connections import AnswerTooLarge, NodeGone
from inference_bundle.router.dispatch.answers import Answer, Streamed, decode_body
from inference_bundle.router.dispatch.errors import server_gone
from inference_bundle.router.errors import APIError
from inference_bundle.router.limits.limiter import Usage
from inference_bundle.router.routes import Route
from inference_bundle.router.service import RouterService


async def streamed_response(
    service: RouterService, outcome: Streamed | Answer, ctx: RequestContext
) -> Response:
    """The response for a stream whose answer has begun (or came whole through a task)."""
    if isinstance(outcome, Answer):
        events = _whole_as_events(service, outcome, ctx)
    elif outcome.status >= 400:
        # The server refused the request: its status and error, not a stream.
        answer = await _refusal(service, outcome, ctx)
        return JSONResponse(
            answer_body(answer, ctx.asked), status_code=answer.status, headers=ctx.headers
        )
    else:
        events = _relay(service, outcome, ctx)
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", **ctx.headers}
    )


async def waiting_stream(
    service: RouterService, route: Route, runtime_request: dict[str, Any], ctx: RequestContext
) -> AsyncIterator[bytes]:
    """A stream that may have to wait for its model: SSE comments say its state meanwhile."""
    notes: asyncio.Queue[str] = asyncio.Queue()

    async def on_wait(note: str) -> None:
        # "<model> is queued, waited 12 s; the scheduler expects ...", or its place in line.
        await notes.put(sse_chunks.comment(note))

    task = asyncio.create_task(
        service.dispatcher.stream(route, runtime_request, on_wait, ctx.asker())
    )
    waited = False
    try:
        while not task.done() or not notes.empty():
            note = asyncio.ensure_future(notes.get())
            done, _ = await asyncio.wait({task, note}, return_when=asyncio.FIRST_COMPLETED)
            if note in done:
                yield note.result().encode()
            else:
                note.cancel()
        waited = True
    finally:
        if not waited:
            # The client left while the model started: the start goes on, the request not.
            _abandon(task)
            record(service, ctx, CLIENT_CLOSED, None)
    try:
        outcome = task.result()
    except APIError as err:
        record(service, ctx, err.status, None)
        yield failed(ctx.path, err.body())
        return
    if isinstance(outcome, Answer):
        events = _whole_as_events(service, outcome, ctx)
    elif outcome.status >= 400:
        try:
            body = answer_body(await _refusal(service, outcome, ctx), ctx.asked)
        except APIError as err:
            body = err.body()
        yield failed(ctx.path, body)
        return
    else:
        events = _relay(service, outcome, ctx)
    try:
        async for event in events:
            yield event
    finally:
        # The client left: the relay's own cleanup (its record) runs now, not when collected.
        await events.aclose()
        if isinstance(outcome, Streamed) and not outcome.relay.ended:
            # The client left before the relay began (its own cleanup never ran).
            outcome.relay.cancel()
            outcome.finish(False)


def _abandon(task: asyncio.Task[Streamed | Answer]) -> None:
    """Stop waiting for a stream's start; a stream already begun is cancelled at its server."""
    if not task.done():
        task.cancel()
    elif not task.cancelled() and task.exception() is None:
        outcome = task.result()
        if isinstance(outcome, Streamed):
            outcome.relay.cancel()
            outcome.finish(False)


async def _relay(
    service: RouterService, streamed: Streamed, ctx: RequestContext
) -> AsyncGenerator[bytes, None]:
    """The server's events as they come; an alias is named as the user wrote it, and the
    usage chunk the router asked for is charged, and passed on only if the client asked."""
    served, asked = ctx.model, ctx.asked
    rename = None
    if asked != served:
        rename = (_json_field("model", served), _json_field("model", asked))
    tap = UsageTap(keep=ctx.include_usage or not ctx.operation.usage_in_stream)
    whole = False
    done_sent = False
    left = False
    try:
        async for received in streamed.relay.body():
            chunk = tap.feed(received)
            if not chunk:
                continue
            # A client may hang up as soon as it reads [DONE] (the openai SDK does) or a
            # stream's last named event, before the server's end of the answer reaches the
            # router: the answer was whole.
            done_sent = chunk.endswith(b"data: [DONE]\n\n") or any(
                last in chunk for last in sse_named_events.LAST_EVENTS
            )
            yield chunk if rename is None else chunk.replace(*rename)
        rest = tap.rest()
        if rest:
            yield rest if rename is None else rest.replace(*rename)
        whole = True
    except NodeGone as gone:
        yield failed(ctx.path, server_gone(served, gone).body())
    except (GeneratorExit, asyncio.CancelledError):
        # Closed at a yield or cancelled in a wait: the client hung up (or the router stops).
        # The server broke nothing; NodeGone, above, is the server breaking off.
        left = True
        raise
    finally:
        whole = whole or done_sent
        if not streamed.relay.ended:
            streamed.relay.cancel()  # the client left, or the server did: stop generating
        streamed.finish(whole)
        usage, estimated = tap.usage, False
        ticket = ctx.ticket
        if usage is None and ticket is not None and ticket.cost is not None:
            # Cut before the backend counted: the prompt as reserved, a token an event.
            usage, estimated = Usage(ticket.cost.prompt, tap.events), True
        record(
            service,
            ctx,
            streamed.status if whole else CLIENT_CLOSED if left else 502,
            streamed,
            usage=usage,
            estimated=estimated,
        )


class UsageTap:
    """Reads the ``usage`` of a stream's events as they pass; drops the usage-only chunk
    when the client did not ask for it (``keep`` False). Events pass whole: a part of one
    waits for its end (the server writes each in one piece, so this is rare)."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.usage: Usage | None = None
        self.events = 0
        self._fields: dict[str, Any] = {}
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._partial + chunk if self._partial else chunk
        end = data.rfind(b"\n\n") + 2
        if end < 2:
            self._partial = data
            return b""
        self._partial = data[end:]
        whole = data[:end]
        self.events += whole.count(b"\n\ndata: ") + 1
        if b'"usage":{' not in whole and b'"usage": {' not in whole:
            return whole
        kept = []
        for event in whole.split(b"\n\n")[:-1]:
            fields = usage_fields(event) if b'"usage"' in event else None
            if fields is not None:
                # Anthropic's stream counts the prompt in message_start and the output in
                # message_delta: each event's fields update the ones read before.
                self._fields.update({k: v for k, v in fields.items() if v is not None})
                self.usage = usage_of_fields(self._fields) or self.usage
                if not self.keep and b'"choices":[]' in event:
                    continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def rest(self) -> bytes:
        rest, self._partial = self._partial, b""
        return rest


async def _whole_as_events(
    service: RouterService, answer: Answer, ctx: RequestContext
) -> AsyncGenerator[bytes, None]:
    """A whole answer (through a task) as the run of chunks a stream would have sent."""
    record(service, ctx, answer.status, answer)
    body = answer_body(answer, ctx.asked)
    if answer.status >= 400:
        yield failed(ctx.path, body)
        return
    style = ctx.operation.stream
    if style in sse_named_events.NAMED_EVENT_STREAMS:
        for named in sse_named_events.whole_as_events(style, body):
            yield named.encode()
        return
    for chunk in sse_chunks.chunks(style, body, ctx.include_usage):
        yield sse_chunks.event(chunk).encode()
    yield sse_chunks.DONE.encode()


def failed(path: str, body: Any) -> bytes:
    """A stream's closing error: an event the operation's SDK raises on, then the end."""
    style = operation(path).stream
    if style in sse_named_events.NAMED_EVENT_STREAMS and isinstance(body, dict):
        return sse_named_events.error_event(style, body).encode()
    return (sse_chunks.event(body) + sse_chunks.DONE).encode()


async def _refusal(service: RouterService, streamed: Streamed, ctx: RequestContext) -> Answer:
    """A stream the server refused (status >= 400): its whole error body, recorded."""
    try:
        raw = await streamed.relay.read(service.settings.data_plane.max_answer_bytes)
    except (NodeGone, AnswerTooLarge) as gone:
        streamed.finish(False)
        record(service, ctx, 502, streamed)
        raise server_gone(ctx.model, NodeGone(str(gone))) from None
    streamed.finish(True)
    answer = _as_answer(streamed, raw)
    record(service, ctx, answer.status, answer)
    return answer


def _as_answer(streamed: Streamed, raw: bytes) -> Answer:
    return Answer(
        streamed.status,
        decode_body(raw),
        streamed.start_wait_s,
        streamed.waited_s,
        streamed.cold_start,
        via=streamed.via,
    )


def _json_field(name: str, value: str) -> bytes:
    return f"{json.dumps(name)}:{json.dumps(value)}".encode()
