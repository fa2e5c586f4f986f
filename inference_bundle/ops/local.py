"""`make deploy` for clusters served from this machine: the router in the background with
the engine executor (the embedded local cluster, or a Slurm site without the Globus cloud).

Everything it starts is recorded under .state/deploy/<cluster>/ (see local_run), so that a
second deploy with the same input changes nothing and `make stop` finds everything again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import node_runtime
import yaml

from inference_bundle.config.catalog import Catalog, CatalogEntry, load_catalog
from inference_bundle.config.frameworks import FRAMEWORKS
from inference_bundle.ops.local_inputs import (
    api_key,
    check_local_inputs,
    fingerprint,
    router_settings,
)
from inference_bundle.ops.local_run import (
    DeployError,
    LocalDeployment,
    Say,
    read_or_empty,
)
from inference_bundle.ops.router_client import RouterClient
from inference_bundle.ops.supervise import start_router, stop_router
from inference_bundle.rendering.specs import server_spec
from inference_bundle.router.store.private_files import file_access, write_private

__all__ = ["DeployError", "deploy", "stop"]


def deploy(root: Path, cluster: str, port: int | None, say: Say = print) -> None:
    """Validate, start the router if needed, wait for real answers, and say how to call it."""
    run = LocalDeployment(root, cluster)
    catalog = load_catalog(root, cluster)
    settings = router_settings(root, cluster, port)
    # Before anything stops or starts: a file_group this account cannot use stops here.
    access = file_access(settings.file_group, f"config/router/{cluster}.yaml")
    check_local_inputs(catalog)
    key = api_key(run, settings)
    deployed = fingerprint(root, cluster, settings)
    url = f"http://{settings.listen.host}:{settings.listen.port}"
    router = RouterClient(url, key)
    run.make_private(access)  # a log an older deploy left readable to all, too
    pid = run.router_pid()
    if pid is not None and read_or_empty(run.fingerprint_file) == deployed and router.healthy():
        say(
            f"{cluster}: already deployed and serving at {url} (router pid {pid}); nothing changed."
        )
        _print_usage(say, url, cluster, catalog, key, run)
        return
    if pid is not None:
        say(f"{cluster}: the deployed input changed; restarting the router (pid {pid})")
        stop_router(run, say)
    dumped = yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=True)
    write_private(run.settings_file, dumped, access)
    start_router(run, catalog, url, say, access)
    # The models start side by side: the cold starts overlap rather than add up.
    entries = list(catalog.enabled())
    with concurrent.futures.ThreadPoolExecutor(max(1, len(entries))) as pool:
        for started in [pool.submit(_first_answer, router, cluster, e, say) for e in entries]:
            started.result()  # a model that did not answer: its DeployError
    write_private(run.fingerprint_file, deployed, access)
    say(f"{cluster}: deployed; every model answered.")
    _print_usage(say, url, cluster, catalog, key, run)


def stop(root: Path, say: Say = print) -> None:
    """Stop every local deployment's router and the model servers they started."""
    folders = sorted((root / ".state" / "deploy").glob("*/router.pid"))
    if not folders:
        say("nothing deployed here; nothing to stop.")
    for pid_file in folders:
        run = LocalDeployment(root, pid_file.parent.name)
        stop_router(run, say)
        with contextlib.suppress(Exception):
            catalog = load_catalog(root, run.cluster)
            for entry in catalog.entries:
                spec = server_spec(entry, catalog.profile)
                if node_runtime.stop_server(spec, reason="make stop"):
                    say(f"{run.cluster}: stopped the {entry.endpoint.name} server")
        pid_file.unlink(missing_ok=True)
        run.fingerprint_file.unlink(missing_ok=True)


def _first_answer(router: RouterClient, cluster: str, entry: CatalogEntry, say: Say) -> None:
    """Send a real request and wait for its answer, saying the model's state meanwhile."""
    ep = entry.endpoint
    base = FRAMEWORKS[ep.framework].base_path(cluster)
    body: dict[str, Any] = {"model": ep.name}
    if ep.kind == "embedding":
        path, body["input"] = f"{base}/embeddings", "ready?"
    elif ep.kind == "rerank":
        path = f"{base}/rerank"
        body |= {"query": "ready?", "documents": ["ready?"]}
    else:
        path = f"{base}/chat/completions"
        body |= {"messages": [{"role": "user", "content": "ready?"}], "max_tokens": 1}
    say(f"{cluster}: waiting for a first answer from {ep.name} (a cold start takes a while)")
    outcome: dict[str, str | None] = {}

    def ask() -> None:
        outcome["error"] = router.post_until_answered(path, body)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    began, last_state = time.monotonic(), ""
    while worker.is_alive():
        worker.join(timeout=3)
        state = router.model_state(cluster, ep.framework, ep.name)
        if state and state != last_state:
            say(f"  {ep.name}: {state} ({time.monotonic() - began:.0f} s)")
            last_state = state
    if outcome.get("error"):
        raise DeployError(f"{ep.name} did not answer: {outcome['error']}")
    say(f"  {ep.name}: answered after {time.monotonic() - began:.0f} s")


def _print_usage(
    say: Say, url: str, cluster: str, catalog: Catalog, key: str, run: LocalDeployment
) -> None:
    chat = next((e for e in catalog.enabled() if e.endpoint.kind in ("chat", "base")), None)
    say("")
    say(f"API key: {key}")
    say(f"  (kept in {run.shown(run.key_file)}; `make stop` stops everything)")
    if chat is None:
        return
    base = url + FRAMEWORKS[chat.endpoint.framework].base_path(cluster)
    model = chat.endpoint.name
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    say("")
    say("curl:")
    say(f"  curl {base}/chat/completions \\")
    say(f'    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\')
    say(f"    -d '{body}'")
    say("")
    say("openai SDK:")
    say("  from openai import OpenAI")
    say(f'  client = OpenAI(api_key="{key}", base_url="{base}")')
    say(f'  reply = client.chat.completions.create(model="{model}",')
    say('      messages=[{"role": "user", "content": "Hello!"}], max_tokens=16)')
    say("  print(reply.choices[0].message.content)")
