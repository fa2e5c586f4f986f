"""Auth: access policy by identity domain and group, and API keys."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from inference_bundle.config.settings import AuthSettings, ClusterPolicy, KeysAuthSettings
from inference_bundle.router.auth import (
    AuthConfigError,
    Caller,
    build_authenticator,
    check_access,
    create_api_key,
    may_use,
)
from inference_bundle.router.errors import APIError
from tests.router.auth_helpers import caller, globus_settings, rejected

# --- Policy ------------------------------------------------------------------------------


def test_wrong_identity_domain_is_403_naming_the_domains() -> None:
    settings = globus_settings()
    outsider = caller("jdoe@gmail.com", "auroragpt")
    with pytest.raises(APIError) as caught:
        check_access(outsider, settings, "sophia", [])
    assert caught.value.status == 403
    assert "cluster sophia" in caught.value.message
    assert "`anl.gov` or `alcf.anl.gov`" in caught.value.message
    assert "jdoe@gmail.com" in caught.value.message
    assert not may_use(outsider, settings, "sophia", [])


def test_domains_match_exactly_and_ignore_case() -> None:
    settings = globus_settings()
    assert may_use(caller("jdoe@ALCF.anl.gov"), settings, "sophia", [])
    assert not may_use(caller("jdoe@evil-anl.gov"), settings, "sophia", [])
    assert not may_use(caller("jdoe@anl.gov.example.com"), settings, "sophia", [])


def test_cluster_policy_by_group() -> None:
    settings = globus_settings()
    assert may_use(caller("a@gmail.com", "alcf-staff"), settings, "polaris", [])
    with pytest.raises(APIError, match="membership in the group `alcf-staff`"):
        check_access(caller("a@anl.gov", "auroragpt"), settings, "polaris", [])


def test_cluster_without_policy_admits_every_caller() -> None:
    assert may_use(caller("a@gmail.com"), globus_settings(), "local", [])


def test_group_restricted_endpoint() -> None:
    settings = globus_settings()
    check_access(caller("a@anl.gov", "auroragpt"), settings, "sophia", ["auroragpt"])
    with pytest.raises(APIError) as caught:
        check_access(caller("b@anl.gov", "alcf-staff"), settings, "sophia", ["auroragpt"])
    assert caught.value.status == 403
    assert "limited to members of the group `auroragpt`" in caught.value.message
    assert "cluster" not in caught.value.message  # the cluster policy was met


def test_403_names_both_missing_requirements() -> None:
    with pytest.raises(APIError) as caught:
        check_access(caller("a@gmail.com"), globus_settings(), "sophia", ["x", "y"])
    assert "cluster sophia requires" in caught.value.message
    assert "group `x` or `y`" in caught.value.message


# --- Keys mode ---------------------------------------------------------------------------


def keys_settings(keys_file: str) -> AuthSettings:
    return KeysAuthSettings(mode="keys", keys_file=keys_file)


def test_good_key_bad_key_and_missing_key(tmp_path: Path) -> None:
    keys_file = tmp_path / ".state/router/api-keys.json"
    key = create_api_key(keys_file, "alice", ["auroragpt"])
    auth = build_authenticator(keys_settings(".state/router/api-keys.json"), tmp_path)
    assert auth.authenticate(f"Bearer {key}") == Caller(
        user="alice", identity_id=None, groups=frozenset({"auroragpt"})
    )
    error = rejected(auth, f"Bearer {key[:-1]}x")
    assert error.code == "invalid_api_key"
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    assert rejected(auth, None).code == "missing_credentials"
    assert rejected(auth, key).code == "malformed_credentials"


def test_keys_file_holds_no_plaintext_and_is_private(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    key = create_api_key(keys_file, "alice")
    assert key not in keys_file.read_text()
    assert key[3:] not in keys_file.read_text()
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_two_keys_coexist_and_new_keys_are_seen_without_restart(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    alice = create_api_key(keys_file, "alice")
    auth = build_authenticator(keys_settings(str(keys_file)), Path("/nonexistent"))
    bob = create_api_key(keys_file, "bob", ["staff"])
    assert alice != bob
    assert auth.authenticate(f"Bearer {alice}").user == "alice"
    assert auth.authenticate(f"Bearer {bob}") == Caller("bob", None, frozenset({"staff"}))
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600


def test_keys_mode_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="auth.keys_file: mode keys needs"):
        build_authenticator(KeysAuthSettings(mode="keys"), tmp_path)
    with pytest.raises(AuthConfigError, match="does not exist; `make deploy` creates it"):
        build_authenticator(keys_settings("missing.json"), tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(AuthConfigError, match="cannot read"):
        create_api_key(broken, "alice")


def test_keys_never_reach_logs_or_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys_file = tmp_path / "keys.json"
    with caplog.at_level(logging.DEBUG):
        key = create_api_key(keys_file, "alice")
        auth = build_authenticator(keys_settings(str(keys_file)), tmp_path)
        auth.authenticate(f"Bearer {key}")
        wrong = key[:-2] + "zz"
        messages = [rejected(auth, f"Bearer {wrong}").message, rejected(auth, f"Key {key}").message]
    assert "alice" in caplog.text
    for secret in (key, wrong):
        assert secret not in caplog.text
        assert all(secret not in m for m in messages)


def test_keys_mode_403_says_to_ask_for_a_key() -> None:
    settings = KeysAuthSettings(
        mode="keys", keys_file="k.json", policy={"local": ClusterPolicy(groups=["staff"])}
    )
    with pytest.raises(APIError, match="Ask the operators for a key"):
        check_access(caller("alice"), settings, "local", [])
