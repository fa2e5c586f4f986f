"""Walltime is a non-event: a replica on the real local Slurm with a 2-minute walltime, under
continuous load, gets a successor before its job's end and is stopped before the scheduler
would end it; no request fails.

The local Slurm has one node, so the successor's job runs on the same host: it starts a
server of its own there (each replica's server has its own folder, ``ServerSpec.replica``),
and once that one is ready the old replica drains and its job is cancelled. A server the
old job started dies with it, so the successor could not have taken it over.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from node_runtime import watchdog
from node_runtime.server_files import ServerPaths, read_state, runtime_folder

from tests.dataplane_e2e import CHAT as LOCAL_CHAT
from tests.dataplane_e2e import long_chat, post, short_chat, timed_stream
from tests.e2e_router import TINY, RunningRouter, scratch_root, stop_router
from tests.router_process import start_router_on
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CLUSTER = "local-slurm"
CHAT = LOCAL_CHAT.replace("/local/", f"/{CLUSTER}/")
WALLTIME_S = 120
STATE_DIR = ".state/runtime-slurm"  # config/clusters/local-slurm.yaml's state_dir


@pytest.fixture
def router(local_slurm: Path, tmp_path: Path) -> Iterator[RunningRouter]:
    root = scratch_root(tmp_path)
    (root / ".state" / "batches").mkdir()
    endpoint = root / "endpoints" / CLUSTER / "tiny-chat.yaml"
    extra = {"walltime": "00:02:00", "replicas": {"min": 1, "max": 1}}
    endpoint.write_text(endpoint.read_text() + yaml.safe_dump(extra))
    settings = {
        "clusters": [CLUSTER],
        "replicas": {"rotation_margin_s": 30, "stop_before_walltime_s": 20, "lost_after_s": 10},
    }
    running = start_router_on(root, "walltime", "127.0.0.1", lambda url: settings)
    try:
        yield running
    finally:
        stop_router(running)
        servers = recorded_servers(root)
        for job in our_jobs():
            subprocess.run(["scancel", job[0]], check=False)
        # Slurm ends each job's processes, the watchdog among them, which removes the
        # server's scratch folder (its vLLM sockets) before it goes.
        folders = [runtime_folder(server_id) for server_id in servers]
        wait_until(
            lambda: not any(folder.exists() for folder in folders),
            lambda: f"the removal of {[f for f in folders if f.exists()]}",
            timeout_s=watchdog.ENDING_S + 10,
        )


def recorded_servers(root: Path) -> list[str]:
    """The ids of the servers recorded in the cluster's state_dir (its local-slurm.yaml)."""
    found = (read_state(ServerPaths(f.parent)) for f in root.glob(f"{STATE_DIR}/*/*/state.json"))
    return [state.server_id for state in found if state is not None]


def our_jobs() -> list[tuple[str, str]]:
    """(job id, start time) of the chat model's Slurm jobs, as squeue lists them."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%i %j %S"], capture_output=True, text=True, check=True
    )
    return [
        (line.split()[0], line.split()[2])
        for line in listed.stdout.splitlines()
        if f"{CLUSTER}-tiny-chat" in line
    ]


def replicas(router: RunningRouter) -> list[dict[str, Any]]:
    listing = httpx.get(
        router.url + "/resource_server/list-endpoints",
        headers={"Authorization": f"Bearer {router.key}"},
        timeout=30,
    ).json()
    models = listing["clusters"][CLUSTER]["frameworks"]["vllm"]["models"]
    [model] = [m for m in models if m["id"] == TINY]
    return list(model["replicas"])


def test_a_replica_is_rotated_before_its_walltime_and_no_request_fails(
    router: RunningRouter,
) -> None:
    wait_until(
        lambda: [r["state"] for r in replicas(router)] == ["ready"],
        lambda: f"the first replica ready: {replicas(router)}",
        timeout_s=600,
        every_s=2,
    )
    [(first_job, _)] = our_jobs()
    [first_server] = recorded_servers(router.root)
    began = time.monotonic()
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load(streaming: bool) -> None:
        while not stop.is_set():
            if streaming:
                stream = timed_stream(router.url, router.key, CHAT, long_chat(TINY, 32))
                if stream.status != 200 or stream.events[-1] != "[DONE]":
                    failures.append(f"stream {stream.status}: {stream.events[-2:]}")
            else:
                answer = post(router.url, router.key, CHAT, short_chat(TINY))
                if answer.status_code != 200:
                    failures.append(f"whole {answer.status_code}: {answer.text[:300]}")
            answered[0] += 1

    users = [threading.Thread(target=load, args=(n % 2 == 0,)) for n in range(2)]
    for user in users:
        user.start()
    try:
        # The successor is asked for about 30 s (the margin) plus the first start before the
        # walltime; once its own server is ready the first replica drains and its job ends.
        gone = wait_until(
            lambda: first_job not in [job for job, _ in our_jobs()] and time.monotonic(),
            "the first job to end",
            timeout_s=WALLTIME_S + 60,
            every_s=1,
        )
        ran_s = gone - began
        # Its server went with it, and so did the server's scratch folder.
        wait_until(
            lambda: not runtime_folder(first_server).exists(),
            f"the removal of the first server's {runtime_folder(first_server)}",
            timeout_s=watchdog.ENDING_S + 10,
        )
        # ... and requests go on being answered after it.
        after = answered[0]
        wait_until(lambda: answered[0] >= after + 20, "20 answers more", timeout_s=60)
    finally:
        stop.set()
        for user in users:
            user.join(120)
    assert failures == [], failures
    assert answered[0] > 20
    # The first job ended before its walltime (it had run a while before `began`).
    assert ran_s < WALLTIME_S - 10, ran_s
    # The model is served by the successor (which may by now have one of its own: each
    # job runs about a minute before its successor is asked for).
    now = replicas(router)
    assert all(r["asked_for"] == "walltime" for r in now), now
    assert any(r["state"] == "ready" for r in now), now
    assert 1 <= len(our_jobs()) <= 2
