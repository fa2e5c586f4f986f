"""`python -m tests.router.upload_server STATE PORT`: the fast tier's router on a real socket.

The service of tests/router/conftest.py (the real catalog, keys in STATE/keys.json), served
by uvicorn as `python -m inference_bundle.router` serves it, in a process of its own: the
test's clients then share no interpreter lock with it, so what they time is the router.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from inference_bundle.router.app import create_app
from inference_bundle.router.service import build_service
from tests.router.conftest import ROOT, settings


def main() -> None:
    state, port = Path(sys.argv[1]), int(sys.argv[2])
    service = build_service(settings(state, batches={"prestart_engines": False}), ROOT)
    uvicorn.run(
        create_app(service),
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
