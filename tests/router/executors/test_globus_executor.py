"""The globus executor at the SDK boundary: what the router asks of globus_compute_sdk.

No test reaches the Globus cloud: a recording stand-in takes the SDK Executor's place, and
the real SDK class is checked for the calls the router makes.
"""

from __future__ import annotations

import inspect
import json
import shutil
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from globus_compute_sdk import Executor as SDKExecutor
from globus_compute_sdk.errors import TaskExecutionFailed

from inference_bundle.config.catalog import load_catalog
from inference_bundle.config.problems import RegistryError
from inference_bundle.config.registry import Registry
from inference_bundle.config.settings import RouterSettings, parse_settings
from inference_bundle.router.app import create_app
from inference_bundle.router.auth import create_api_key
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.base import FunctionFailed
from inference_bundle.router.executors.globus import GlobusExecutor, SharedSubmitter
from inference_bundle.router.service import build_service
from tests.router.conftest import ROOT, chat_answer, unsalted

SERVE_ID = str(uuid.uuid4())


class RecordingSDKExecutor:
    """Takes globus_compute_sdk.Executor's place; answers like the node runtime would."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.endpoint_id: str | None = None
        self.user_endpoint_config: dict[str, Any] | None = None
        self.calls: list[tuple[str | None, str, tuple[Any, ...]]] = []
        self.configs: list[dict[str, Any] | None] = []
        self.fail_with = fail_with
        self.stopped = False

    def submit_to_registered_function(
        self, function_id: str, args: tuple[Any, ...] | None = None, kwargs: Any = None
    ) -> Future[Any]:
        assert args is not None
        self.calls.append((self.endpoint_id, function_id, args))
        self.configs.append(self.user_endpoint_config)
        future: Future[Any] = Future()
        if self.fail_with is not None:
            future.set_exception(self.fail_with)
        else:
            _version, spec, request = args
            future.set_result(chat_answer(spec, request))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.stopped = True


def registry(endpoints: dict[str, str]) -> Registry:
    return Registry.model_validate(
        {
            "cluster": "sophia",
            "runtime_version": "0.1.0",
            "functions": {"serve": {"id": SERVE_ID, "source_sha256": "0" * 64}},
            "endpoints": endpoints,
        }
    )


def serve(*args: Any) -> None:
    """Named like the entry point: the executor maps a function to its id by name."""


def test_real_sdk_offers_what_the_router_calls() -> None:
    params = inspect.signature(SDKExecutor.submit_to_registered_function).parameters
    assert list(params)[:4] == ["self", "function_id", "args", "kwargs"]
    assert isinstance(inspect.getattr_static(SDKExecutor, "endpoint_id"), property)
    assert inspect.getattr_static(SDKExecutor, "endpoint_id").fset is not None
    init = inspect.signature(SDKExecutor.__init__).parameters
    assert {"api_burst_limit", "api_burst_window_s", "batch_size"} <= set(init)


def test_each_endpoint_gets_its_own_id_under_concurrency() -> None:
    ids = {f"sophia-model-{i}": str(uuid.uuid4()) for i in range(4)}
    sdk = RecordingSDKExecutor()
    submitter = SharedSubmitter(sdk)
    executors = [GlobusExecutor(name, registry(ids), submitter) for name in ids]

    def hammer(executor: GlobusExecutor) -> None:
        for _ in range(50):
            executor.submit(serve, "0.1.0", {"name": executor.endpoint}, {"body": {}}).result()

    threads = [threading.Thread(target=hammer, args=(e,)) for e in executors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sdk.calls) == 200
    for endpoint_id, function_id, args in sdk.calls:
        assert function_id == SERVE_ID
        assert endpoint_id == ids[args[1]["name"]]


def test_each_replica_is_a_user_endpoint_of_its_own() -> None:
    # The service makes one user endpoint per distinct user endpoint config (its id is of
    # endpoint, identity and config): the replica index in it gives each replica its own.
    assert isinstance(inspect.getattr_static(SDKExecutor, "user_endpoint_config"), property)
    assert inspect.getattr_static(SDKExecutor, "user_endpoint_config").fset is not None
    ids = {"sophia-a": str(uuid.uuid4())}
    sdk = RecordingSDKExecutor()
    submitter = SharedSubmitter(sdk)
    first, second = (GlobusExecutor("sophia-a", registry(ids), submitter, n) for n in (0, 2))
    for executor in (first, second, first):
        executor.submit(serve, "0.1.0", {"name": "m"}, {"body": {}}).result()
    assert [endpoint for endpoint, _, _ in sdk.calls] == [ids["sophia-a"]] * 3
    # Replica 0 is the endpoint as it always was (no options); the others name their index.
    assert sdk.configs == [None, {"replica": 2}, None]


def test_remote_failure_becomes_function_failed() -> None:
    remote = TaskExecutionFailed("Traceback ...\nServerStartError: weights not found at /eagle/x")
    sdk = RecordingSDKExecutor(fail_with=remote)
    executor = GlobusExecutor(
        "sophia-a", registry({"sophia-a": str(uuid.uuid4())}), SharedSubmitter(sdk)
    )
    with pytest.raises(FunctionFailed, match="sophia-a: ServerStartError: weights not found"):
        executor.submit(serve, "0.1.0", {}, {}).result()


def test_payload_over_ten_megabytes_is_refused_before_submission() -> None:
    sdk = RecordingSDKExecutor()
    executor = GlobusExecutor(
        "sophia-a", registry({"sophia-a": str(uuid.uuid4())}), SharedSubmitter(sdk)
    )
    with pytest.raises(APIError) as caught:
        executor.submit(serve, "0.1.0", {}, {"body": {"prompt": "x" * (11 * 2**20)}})
    assert caught.value.status == 413 and not sdk.calls


def test_endpoint_missing_from_the_registry() -> None:
    with pytest.raises(KeyError, match="run `make deploy CLUSTER=sophia`"):
        GlobusExecutor("sophia-b", registry({}), SharedSubmitter(RecordingSDKExecutor()))


def scratch_root(tmp_path: Path, with_registry: bool) -> Path:
    root = tmp_path / "root"
    for folder in ("endpoints", "config", "templates"):
        shutil.copytree(ROOT / folder, root / folder)
    if with_registry:
        catalog = load_catalog(root, "sophia")
        ids = {e.endpoint_name: str(uuid.uuid4()) for e in catalog.entries}
        ids["sophia-jobs"] = str(uuid.uuid4())
        registry_file = root / "config" / "registry" / "sophia.yaml"
        registry_file.parent.mkdir(parents=True, exist_ok=True)
        registry_file.write_text(yaml.safe_dump(registry(ids).model_dump()))
    return root


def globus_settings(tmp_path: Path) -> RouterSettings:
    return parse_settings(
        {
            "clusters": ["sophia"],
            "executor": "globus",
            "state_dir": str(tmp_path / "state"),
            "auth": {"mode": "keys", "keys_file": str(tmp_path / "keys.json")},
            # As config/router/sophia.yaml: nodes dial the gateway's public address.
            "data_plane": {"dial_url": "https://data-portal-dev.cels.anl.gov"},
        }
    )


def test_missing_registry_names_the_file(tmp_path: Path) -> None:
    create_api_key(tmp_path / "keys.json", "alice@anl.gov")
    root = scratch_root(tmp_path, with_registry=False)
    with pytest.raises(RegistryError) as caught:
        build_service(globus_settings(tmp_path), root, sdk_executor=RecordingSDKExecutor)
    [problem] = [str(p) for p in caught.value.problems]
    assert problem == (
        "config/registry/sophia.yaml: (file): missing; "
        "run `make deploy CLUSTER=sophia` to create it"
    )


@pytest.mark.anyio
async def test_chat_through_the_app_reaches_the_sdk(tmp_path: Path) -> None:
    key = create_api_key(tmp_path / "keys.json", "alice@anl.gov")
    root = scratch_root(tmp_path, with_registry=True)
    sdk = RecordingSDKExecutor()
    service = build_service(globus_settings(tmp_path), root, sdk_executor=lambda: sdk)
    body = {
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "messages": [{"role": "user", "content": "hi"}],
    }
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        response = await client.post(
            "/resource_server/sophia/vllm/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 200, response.text
    [(endpoint_id, function_id, args)] = sdk.calls
    registered = yaml.safe_load((root / "config" / "registry" / "sophia.yaml").read_text())
    assert endpoint_id == registered["endpoints"]["sophia-meta-llama-3-1-8b-instruct"]
    assert function_id == SERVE_ID
    version, spec, request = args
    assert spec["weights"] == "/raid/argonne_tpc/model_weights/Meta-Llama-3.1-8B-Instruct"
    assert request.pop("expires_at") > time.time()  # when the caller stops waiting
    # Where the server dials once it is up: the sophia profile's gateway, with a credential
    # minted for this endpoint only.
    dial = request.pop("dial")
    assert dial["url"] == "https://data-portal-dev.cels.anl.gov"
    assert dial["endpoint"] == "sophia-meta-llama-3-1-8b-instruct"
    assert len(dial["token"]) >= 32 and dial["ca_file"] is None
    assert {**request, "body": unsalted(request["body"])} == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "body": body,
    }
    assert json.loads(response.text)["choices"][0]["message"]["content"] == "hello there"
    service.shutdown()
    assert sdk.stopped


class SilentSDKExecutor(RecordingSDKExecutor):
    """Accepts tasks and never answers: a model still loading on its node."""

    def submit_to_registered_function(
        self, function_id: str, args: tuple[Any, ...] | None = None, kwargs: Any = None
    ) -> Future[Any]:
        self.calls.append((self.endpoint_id, function_id, args or ()))
        return Future()


@pytest.mark.anyio
async def test_waiting_state_comes_from_the_job_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_api_key(tmp_path / "keys.json", "alice@anl.gov")
    root = scratch_root(tmp_path, with_registry=True)
    settings = globus_settings(tmp_path).model_copy(update={"wait_s": 0.3})
    service = build_service(settings, root, sdk_executor=SilentSDKExecutor)
    service.dispatcher.poll_s = 0.05
    endpoint = "sophia-meta-llama-3-1-8b-instruct"

    async def listing(cluster: str) -> dict[str, Any]:
        return {"jobs": [{"endpoint": endpoint, "scheduler_state": "running", "state": "starting"}]}

    monkeypatch.setattr(service.job_listing, "jobs", listing)
    body = {
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "messages": [{"role": "user", "content": "hi"}],
    }
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        response = await client.post(
            "/resource_server/sophia/vllm/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 503
    assert response.json()["error"]["state"] == "starting"
    assert response.headers["Retry-After"] == "15"
