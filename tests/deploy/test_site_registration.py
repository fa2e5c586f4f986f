"""Globus credentials and function registration, at the SDK's boundary, never the cloud.

The SDK Client is the real one with its web client replaced; the stored login is written
where `globus-compute-endpoint login` leaves it, with fake tokens.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from inference_bundle.ops.registration import (
    ENTRY_POINTS,
    default_client,
    missing_credentials,
    plan_functions,
    register_functions,
)


def _store_login(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `globus-compute-endpoint login` leaves in <folder>/storage.db (fake tokens)."""
    from globus_compute_endpoint.auth import get_globus_app_with_scopes
    from globus_sdk.token_storage import TokenStorageData

    with monkeypatch.context() as patch:
        patch.setenv("GLOBUS_COMPUTE_USER_DIR", str(folder))
        app = get_globus_app_with_scopes()
        identity = str(uuid.uuid4())
        tokens = {
            server: TokenStorageData(
                resource_server=server,
                identity_id=identity,
                scope=" ".join(str(scope) for scope in scopes),
                access_token="access",
                refresh_token="refresh",
                expires_at_seconds=int(time.time()) + 3600,
                token_type="Bearer",
            )
            for server, scopes in app.scope_requirements.items()
        }
        app.token_storage.token_storage.store_token_data_by_resource_server(tokens)


def test_credential_detection_reads_only_the_environment_and_stored_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    folder = tmp_path / "compute"
    assert "does not exist" in str(missing_credentials(folder))
    assert not folder.exists()

    _store_login(folder, monkeypatch)
    assert missing_credentials(folder) is None, "the stored login covers Globus Compute"

    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "s3cret")
    assert "without GLOBUS_COMPUTE_CLIENT_ID" in str(missing_credentials(folder))
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", str(uuid.uuid4()))
    assert missing_credentials(folder) is None, "a client identity gets its tokens on use"


def test_the_real_sdk_client_registers_the_source_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK Client as deploy builds it, with its web client (the network) replaced."""
    from globus_compute_sdk.serialize import ComputeSerializer

    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    client: Any = default_client(tmp_path)
    sent: list[dict[str, Any]] = []

    class Response:
        def __init__(self, data: dict[str, str]) -> None:
            self.data = data

    def record(data: dict[str, Any]) -> Response:
        sent.append(data)
        return Response({"function_uuid": str(uuid.uuid4())})

    client._compute_web_client.v3.register_function = record
    registered = register_functions(plan_functions(None), client)

    assert [d["function_name"] for d in sent] == [e.name for e in ENTRY_POINTS]
    serializer = ComputeSerializer()
    for data in sent:
        (payload,) = serializer.unpack_buffers(data["function_code"])
        assert payload.startswith("st\n"), "PureSourceTextInspect, not pickled by reference"
        sha = hashlib.sha256(payload.encode()).hexdigest()
        assert registered[data["function_name"]].source_sha256 == sha
        function = serializer.deserialize(payload)  # exec'd in an empty namespace
        assert function.__name__ == data["function_name"]
