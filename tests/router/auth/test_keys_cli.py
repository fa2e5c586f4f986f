"""`bundle keys` add, list and revoke; admin callers; a router that sees each change at once."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result

from inference_bundle.config.settings import KeysAuthSettings, load_settings
from inference_bundle.ops.cli import main
from inference_bundle.router.app import create_app
from inference_bundle.router.auth import (
    AuthConfigError,
    Caller,
    GlobusAuthenticator,
    KeysAuthenticator,
    add_api_key,
    build_authenticator,
    list_api_keys,
    revoke_api_key,
)
from inference_bundle.router.auth import keys as keys_module
from inference_bundle.router.auth.callers import digest
from inference_bundle.router.service import build_service
from tests.router.auth_helpers import SECRET_ENV, globus_settings, rejected
from tests.router.conftest import ROOT
from tests.router.fake_globus_auth import FakeGlobusAuth

KEY = re.compile(r"ie-[A-Za-z0-9_-]{20,}")
KEYS_FILE = "state/api-keys.json"  # relative: taken from --root, as the router does


def write_settings(root: Path, auth: dict[str, Any], name: str = "router.yaml") -> Path:
    path = root / name
    data = {
        "clusters": ["local"],
        "executor": "engine",
        "state_dir": str(root / "router-state"),
        "data_plane": {"enabled": False},
        "auth": auth,
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_settings(tmp_path, {"mode": "keys", "keys_file": KEYS_FILE})
    return tmp_path


def bundle(root: Path, *args: str, config: str | None = "router.yaml") -> Result:
    more = ["--config", config] if config is not None else []
    return CliRunner().invoke(main, ["--root", str(root), "keys", *args, *more])


def added(root: Path, *args: str) -> tuple[str, str, Result]:
    """The key and id that `bundle keys add` printed."""
    result = bundle(root, "add", *args)
    assert result.exit_code == 0, result.output
    keys = KEY.findall(result.output)
    assert len(keys) == 1, result.output
    key_id = re.search(r"Created API key ([0-9a-f]{8}) ", result.output)
    assert key_id is not None, result.output
    return keys[0], key_id.group(1), result


def listed(root: Path) -> list[dict[str, Any]]:
    result = bundle(root, "list", "--json")
    assert result.exit_code == 0, result.output
    entries: list[dict[str, Any]] = json.loads(result.output)
    return entries


def test_add_prints_the_key_once_and_stores_only_its_hash(root: Path) -> None:
    key, key_id, result = added(root, "alice@anl.gov", "--group", "staff", "--group", "auroragpt")
    assert result.output.count(key) == 1
    assert "is not stored" in result.output
    assert "cannot be shown again" in result.output
    assert f"bundle keys revoke {key_id}" in result.output
    keys_file = root / KEYS_FILE
    text = keys_file.read_text()
    assert key not in text and key[3:] not in text
    assert digest(key) in text
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    auth = KeysAuthenticator(keys_file)
    assert auth.authenticate(f"Bearer {key}") == Caller(
        user="alice@anl.gov", identity_id=None, groups=frozenset({"staff", "auroragpt"})
    )


def test_list_shows_who_and_never_a_key_or_hash(root: Path) -> None:
    alice, alice_id, _ = added(root, "alice@anl.gov", "--group", "auroragpt")
    bob, bob_id, _ = added(root, "bob", "--admin")
    entries = listed(root)
    assert [(e["id"], e["user"], e["groups"], e["admin"]) for e in entries] == [
        (alice_id, "alice@anl.gov", ["auroragpt"], False),
        (bob_id, "bob", [], True),
    ]
    assert all(set(e) == {"id", "user", "groups", "admin", "created"} for e in entries)
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", e["created"]) for e in entries
    )
    table = bundle(root, "list")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["ID", "USER", "GROUPS", "ADMIN", "CREATED"]
    assert lines[1].split()[:4] == [alice_id, "alice@anl.gov", "auroragpt", "no"]
    assert lines[2].split()[:4] == [bob_id, "bob", "-", "yes"]
    for output in (table.output, bundle(root, "list", "--json").output):
        for key in (alice, bob):
            assert key not in output and digest(key) not in output
        assert "sha256" not in output and "ie-" not in output


def test_admin_flag_round_trips_to_the_caller(root: Path) -> None:
    admin, _, _ = added(root, "ops", "--admin")
    user, _, _ = added(root, "alice")
    auth = KeysAuthenticator(root / KEYS_FILE)
    assert auth.authenticate(f"Bearer {admin}").admin is True
    assert auth.authenticate(f"Bearer {user}").admin is False
    stored = json.loads((root / KEYS_FILE).read_text())["keys"]
    assert [k["admin"] for k in stored] == [True, False]


def test_revoke_removes_the_key_and_an_unknown_id_fails_naming_it(root: Path) -> None:
    alice, alice_id, _ = added(root, "alice")
    _, bob_id, _ = added(root, "bob", "--group", "staff")
    result = bundle(root, "revoke", alice_id)
    assert result.exit_code == 0, result.output
    assert f"Revoked API key {alice_id} of alice" in result.output
    assert [e["id"] for e in listed(root)] == [bob_id]
    auth = KeysAuthenticator(root / KEYS_FILE)
    assert rejected(auth, f"Bearer {alice}").code == "invalid_api_key"
    again = bundle(root, "revoke", alice_id)
    assert again.exit_code == 1
    assert f"no API key has id '{alice_id}'" in again.output
    assert "`bundle keys list` shows the ids" in again.output
    assert [e["id"] for e in listed(root)] == [bob_id]


def test_default_config_is_the_local_router_settings_under_root(tmp_path: Path) -> None:
    (tmp_path / "config/router").mkdir(parents=True)
    write_settings(tmp_path, {"mode": "keys", "keys_file": KEYS_FILE}, "config/router/local.yaml")
    result = bundle(tmp_path, "add", "alice", config=None)
    assert result.exit_code == 0, result.output
    assert [e.user for e in list_api_keys(tmp_path / KEYS_FILE)] == ["alice"]


def test_a_globus_settings_file_is_refused_clearly(tmp_path: Path) -> None:
    write_settings(tmp_path, {"mode": "globus", "globus": {"client_id": "router-client-id"}})
    for args in (["add", "alice"], ["list"], ["revoke", "0123abcd"]):
        result = bundle(tmp_path, *args)
        assert result.exit_code == 1
        assert "router.yaml: auth.mode is globus: API keys are for mode keys" in result.output
    assert not (tmp_path / "state").exists()


def test_settings_without_keys_file_or_keys_file_missing_are_named(tmp_path: Path) -> None:
    write_settings(tmp_path, {"mode": "keys"})
    result = bundle(tmp_path, "add", "alice")
    assert result.exit_code == 1
    assert "router.yaml: auth.keys_file: mode keys needs the path" in result.output
    write_settings(tmp_path, {"mode": "keys", "keys_file": KEYS_FILE})
    for args in (["list"], ["revoke", "0123abcd"]):
        result = bundle(tmp_path, *args)
        assert result.exit_code == 1
        assert f"{tmp_path / KEYS_FILE} does not exist" in result.output
    missing = bundle(tmp_path, "list", config="nope.yaml")
    assert missing.exit_code == 1
    assert "nope.yaml: (file): cannot be read" in missing.output


def test_a_blank_user_or_group_is_refused(root: Path) -> None:
    for args in (["  "], ["alice", "--group", ""]):
        result = bundle(root, "add", *args)
        assert result.exit_code == 1
        assert "an API key needs a printable" in result.output
    assert not (root / KEYS_FILE).exists()


def test_a_file_from_before_admins_still_reads_and_keeps_its_entries(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    old_key = "ie-written-before-admins-existed-0123456789"
    old_entry = {
        "id": "0ld0ld00",
        "user": "carol",
        "groups": ["staff"],
        "sha256": digest(old_key),
        "created": "2025-01-01T00:00:00+00:00",
        "note": "a field this version does not know",
    }
    keys_file.write_text(json.dumps({"version": 1, "keys": [old_entry]}))
    auth = KeysAuthenticator(keys_file)
    assert auth.authenticate(f"Bearer {old_key}") == Caller("carol", None, frozenset({"staff"}))
    new = add_api_key(keys_file, "dave", admin=True)
    data = json.loads(keys_file.read_text())
    assert data["version"] == 1
    assert data["keys"][0] == old_entry
    assert [e.admin for e in list_api_keys(keys_file)] == [False, True]
    assert auth.authenticate(f"Bearer {new.key}").admin is True


def test_an_admin_flag_that_is_not_a_boolean_grants_nothing(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    entry = {"id": "a", "user": "eve", "sha256": digest("ie-x"), "admin": "false"}
    keys_file.write_text(json.dumps({"version": 1, "keys": [entry]}))
    with pytest.raises(AuthConfigError, match="key 'a' has admin 'false'; write true or false"):
        list_api_keys(keys_file)


def test_auth_admins_makes_named_key_users_admins_ignoring_case(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    alice = add_api_key(keys_file, "alice@anl.gov").key
    bob = add_api_key(keys_file, "bob@anl.gov").key
    settings = KeysAuthSettings(mode="keys", keys_file=str(keys_file), admins=["Alice@ANL.gov"])
    auth = build_authenticator(settings, tmp_path)
    assert auth.authenticate(f"Bearer {alice}").admin is True
    assert auth.authenticate(f"Bearer {bob}").admin is False


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGlobusAuth]:
    with FakeGlobusAuth() as server:
        server.apply_env(monkeypatch)
        monkeypatch.setenv(SECRET_ENV, server.client_secret)
        yield server


def test_auth_admins_makes_named_globus_users_admins(fake: FakeGlobusAuth, tmp_path: Path) -> None:
    settings = globus_settings(fake).model_copy(update={"admins": ["jdoe@anl.gov"]})
    auth = build_authenticator(settings, tmp_path)
    assert isinstance(auth, GlobusAuthenticator)
    admin = fake.add_token("jdoe@anl.gov")
    other = fake.add_token("rroe@anl.gov")
    assert auth.authenticate(f"Bearer {admin}").admin is True
    assert auth.authenticate(f"Bearer {other}").admin is False


def test_a_rotation_is_seen_even_when_the_clock_has_not_ticked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's file clock ticks every few ms and a replace frees an inode number that
    the next replace reuses: without a fresh mtime, a revoke then an add of the same size
    would look like the file the router last read, and the revoked key would still work."""
    frozen = time.time_ns()
    monkeypatch.setattr(keys_module, "time_ns", lambda: frozen)
    keys_file = tmp_path / "keys.json"
    key = add_api_key(keys_file, "alice").key
    auth = KeysAuthenticator(keys_file)
    stamps = {keys_file.stat().st_mtime_ns}
    for round_ in range(5):
        assert auth.authenticate(f"Bearer {key}").user == "alice", round_
        revoke_api_key(keys_file, list_api_keys(keys_file)[0].key_id)
        stamps.add(keys_file.stat().st_mtime_ns)
        revoked, key = key, add_api_key(keys_file, "alice").key
        stamps.add(keys_file.stat().st_mtime_ns)
        assert rejected(auth, f"Bearer {revoked}").code == "invalid_api_key", round_
    assert len(stamps) == 11, "each replace carries an mtime no earlier version had"


# --- The router while it serves -----------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_serving_router_sees_added_and_revoked_keys_on_the_next_request(
    tmp_path: Path,
) -> None:
    config = write_settings(tmp_path, {"mode": "keys", "keys_file": str(tmp_path / KEYS_FILE)})
    alice, alice_id, _ = added(tmp_path, "alice")
    service = build_service(load_settings(config, tmp_path), ROOT)
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:

            async def models(key: str) -> httpx.Response:
                return await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})

            assert (await models(alice)).status_code == 200
            bob, _, _ = added(tmp_path, "bob")
            assert (await models(bob)).status_code == 200
            assert bundle(tmp_path, "revoke", alice_id).exit_code == 0
            refused = await models(alice)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert (await models(bob)).status_code == 200
    finally:
        service.shutdown()


def test_make_deploy_shows_a_new_key_once_its_saved_one_was_revoked(tmp_path: Path) -> None:
    """`make deploy` prints the deployment's saved key again, unless it was revoked since."""
    from inference_bundle.config.settings import parse_settings
    from inference_bundle.ops.local_inputs import api_key
    from inference_bundle.ops.local_run import LocalDeployment
    from inference_bundle.router.auth.keys import holds_key, list_api_keys, revoke_api_key

    run = LocalDeployment(tmp_path, "local")
    keys_file = tmp_path / "keys.json"
    settings = parse_settings(
        {
            "clusters": ["local"],
            "executor": "engine",
            "auth": {"mode": "keys", "keys_file": str(keys_file)},
        }
    )
    first = api_key(run, settings)
    assert api_key(run, settings) == first
    [entry] = list_api_keys(keys_file)
    revoke_api_key(keys_file, entry.key_id)
    second = api_key(run, settings)
    assert second != first
    assert holds_key(keys_file, second) and not holds_key(keys_file, first)
