"""Run a server module whose application reaches ``uvicorn.run``, with DialOut around it.

``python -m node_runtime.dialout.wrap_uvicorn infinity_emb.cli v2 --model-id ...`` runs
``infinity_emb.cli`` as its own ``__main__`` with the arguments after it; the application
that module hands to ``uvicorn.run`` is served wrapped in ``DialOut``. For servers that take
no middleware option of their own.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

from .middleware import DialOut


def main(argv: list[str]) -> None:
    """Wrap uvicorn.run, then run the named module as __main__ with the remaining argv."""
    import uvicorn

    if not argv:
        raise SystemExit("usage: python -m node_runtime.dialout.wrap_uvicorn MODULE [ARGS...]")
    serve = uvicorn.run

    def run_wrapped(app: Any, *args: Any, **kwargs: Any) -> None:
        serve(DialOut(app), *args, **kwargs)

    uvicorn.run = run_wrapped
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
