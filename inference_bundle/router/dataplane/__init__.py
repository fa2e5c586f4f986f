"""The data plane's router side: model servers dial in, warm requests and streams ride along.

A task that starts (or finds) a model's server carries a credential this router minted for
that endpoint (``credentials``); the server's agent dials ``/node/v1/connect`` with it and
registers (``endpoint``). Requests then go down the live connection with the fewest in
flight, and answers come back chunk by chunk (``connections``). ``plane.DataPlane`` is what
the dispatcher uses. The wire format is ``node_runtime.wire``.
"""
