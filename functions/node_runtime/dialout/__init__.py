"""The data plane's node side: an agent inside the model server's process that dials out.

Once the node runtime has seen the server answer (``server.py``), it merges a dial into the
server's ``dial.json`` (``dialfile``): the router's URL, this endpoint's name and a
credential that router minted for it (each task carries a fresh one). Several router
replicas may serve one site: the file keeps one dial per router URL. The agent, started
with the server's ASGI application, follows that file and keeps one WebSocket to each
router it names, registering the server on each. Requests then arrive on those connections
and are run against the application directly, in its own event loop: no second process,
no local HTTP hop. Answers go back as the server writes them (``node_runtime.wire``).

How the agent gets into the server: vLLM takes ``--middleware node_runtime.dialout.DialOut``;
a server that has no such option is started through ``python -m
node_runtime.dialout.wrap_uvicorn <module> ...``, which wraps the application it gives to
``uvicorn.run`` (each framework's module says which, ``frameworks.Framework.with_agent``).
"""

from __future__ import annotations

from .middleware import DialOut

__all__ = ["DialOut"]
