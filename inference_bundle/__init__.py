"""The inference endpoints bundle: catalog, rendering, router and the operator's commands.

Layers import one way (import-linter checks it, `make lint`):
``ops`` (the ``bundle`` command) → ``router`` → ``rendering`` → ``config``.
The node runtime (``functions/node_runtime``) is a separate, stdlib-only distribution that
imports none of them.
"""
