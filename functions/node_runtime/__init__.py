"""Node runtime: what runs on a compute node inside a Globus Compute worker.

It starts one vLLM or Infinity server per model, role and node, forwards OpenAI-style requests
to it on 127.0.0.1, and stops it once idle. It reads no catalog: everything arrives as
arguments. Standard library only, so that it installs into any cluster environment; the
data plane's agent, which runs inside the model server's own process, uses the
``websockets`` library of that server's environment (vLLM and Infinity both ship it).

Entry point (``node_runtime.entrypoints.serve``), registered with a source strategy::

    from globus_compute_sdk.serialize import ComputeSerializer, PureSourceTextInspect
    from node_runtime.entrypoints import serve
    client.register_function(serve, serializer=ComputeSerializer(
        strategy_code=PureSourceTextInspect()))
    # then: executor.submit_to_registered_function(fid, args=(version, spec, request))

    serve(expected_runtime_version: str, spec: dict, request: dict) -> dict

``expected_runtime_version`` is ``__version__`` (written in ``node_runtime.version``) as the
deploy side saw it; a mismatch raises RuntimeError before anything starts.

Server spec (``ServerSpec.from_dict``; spec_version 1; unknown fields are refused)::

    {"spec_version": 1,
     "name": "<served model name>",          # --served-model-name; one server per name
     "framework": "vllm" | "infinity",
     "task": "generate" | "embed" | "rerank", # vllm + embed/rerank => --runner pooling
     "weights": "/abs/path/to/model/folder",
     "args": ["--max-model-len", "256"],     # extra server CLI args, appended last
     "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},  # extra server environment
     "python": "/abs/path/bin/python",        # interpreter with vllm or infinity_emb
     "port": 0,                               # 0 = pick a free port
     "idle_timeout_s": 7200,
     "start_timeout_s": 900,
     "state_dir": "/node/local/path",         # lock, state, logs: <state_dir>/<host>/<model>/
     # optional additions to the shape (defaults shown):
     "request_timeout_s": 600,                # bounds the connect and each read
     "stop_grace_s": 10,                      # SIGTERM, then SIGKILL after this
     "role": "interactive",                   # or "batch": a server of its own (runtime 0.2)
     "replica": 0}                            # which replica: a server of its own (0.8)

A batch job (``node_runtime.batch.run_batch``) always uses role "batch": its own server,
folder, lock and port, never the interactive server of the same model on the same host.

A change to name, framework, task, weights, args, env, python or port restarts the server;
the timeouts are updated in place. The server inherits the calling worker's environment
with the spec's env on top: a Parsl worker pinned to one accelerator (CUDA_VISIBLE_DEVICES
set by available_accelerators) passes that pin on unless the spec's env overrides it.

Request: ``{"method": "POST" | "GET", "path": "/v1/chat/completions", "body": {...} | null}``;
paths: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models.
``stream: true`` is answered with a 400 error body (results travel whole; streams ride the
data plane). Optional fields (runtime 0.3): ``"dial": {"url", "token", "endpoint",
"ca_file"}`` tells the server's agent where to dial the router and with which credential;
``"send": false`` only ensures the server (no request is sent); ``"expires_at"`` (epoch s).
Optional, and ignored by older runtimes: ``"trace": {"traceparent", "export_to"[,
"tracestate"]}``, the router's span when it traces the request: the task is then a span of
that trace, exported over OTLP/HTTP to ``export_to``, and its traceparent goes on to the
server (``node_runtime.tracing``; a REQUEST record's head carries the same field).

Result envelope::

    {"runtime_version": str, "status": int, "body": <json>,
     "timings": {"start_wait_s": float, "latency_s": float},
     "server": "started" | "reused",
     "node": {"host": str, "server_id": str, "key": str}}   # when a server is up; "key"
     # (0.7) is the digest of the secret its agent proves at each dial (dialout.node_key)
     # plus "sent": false (send false) or "expired": true (expires_at passed)

The data plane (``node_runtime.dialout``, runtime 0.3): every server runs an agent in its
own process. Once a task has written the server's dial file, the agent dials the router over
a WebSocket (``node_runtime.wire``) and runs the requests that come down it against the
server's application, holding the same in-flight marker and last-use stamp as a request
through ``handle``. Since 0.4 the dial file keeps one dial per router URL (several router
replicas behind one site's address each hand the node their own) and the agent keeps a
connection to each. Since 0.7 bodies cross in bounded records with a window per stream,
the line's liveness is heartbeats, and each dial proves the server's in-memory key. Since
0.8 each heartbeat is followed by the server's own load (vLLM's running and waiting counts,
``dialout.server_load``), so that routers sharing a server see its whole queue.

A batch job (0.4) honours a pause marker in the batch's folder
(``batch_files.request_pause``): it ends with state "paused" after the lines in flight, and
resumes when submitted again once the marker is cleared.

A backend error keeps its status and OpenAI error body; no answer at all becomes 502.
Idle teardown: each request holds a shared lock on an in-flight marker and stamps a last-use
file; a detached watchdog process per server (it survives Parsl worker restarts) stops the
server's process group (TERM, then KILL after stop_grace_s) once no request is in flight and
either idle_timeout_s has passed or the parents of all its callers (the Parsl managers, i.e.
the scheduler jobs that used it) are gone. See ``node_runtime.watchdog``.

A server that fails to start raises ``ServerStartError`` with the log's last lines; an
invalid spec raises ``SpecError``, an invalid request ``RequestError``.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .version import __version__

# Where each public name lives. They load on first use (PEP 562): the agent inside a model
# server imports node_runtime.dialout, and that must not load the whole runtime with it.
_HOMES = {
    "LockTimeout": ".server_files",
    "RequestError": ".proxy",
    "ServerHandle": ".server",
    "ServerSpec": ".spec",
    "ServerStartError": ".server",
    "SpecError": ".spec",
    "ensure_server": ".server",
    "handle": ".proxy",
    "stop_server": ".server",
    "use_server": ".server",
}

if TYPE_CHECKING:
    from .proxy import RequestError, handle
    from .server import ServerHandle, ServerStartError, ensure_server, stop_server, use_server
    from .server_files import LockTimeout
    from .spec import ServerSpec, SpecError


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'node_runtime' has no attribute {name!r}")
    return getattr(import_module(home, __name__), name)


__all__ = [
    "LockTimeout",
    "RequestError",
    "ServerHandle",
    "ServerSpec",
    "ServerStartError",
    "SpecError",
    "__version__",
    "ensure_server",
    "handle",
    "stop_server",
    "use_server",
]
