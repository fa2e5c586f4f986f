"""The token helper against a fake Globus Auth: login, refresh, re-login, identities, logout."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

import inference_auth_token as helper
from inference_bundle.ops.local_run import LocalDeployment
from tests.router.fake_globus_auth import FakeGlobusAuth
from tests.token_helper.conftest import ROOT, SOPHIA, Login, login_url

SCRIPT = ROOT / "inference_auth_token.py"
GATEWAY = SOPHIA.resource_server


def stored(path: Path) -> dict[str, TokenStorageData]:
    return JSONTokenStorage(path).get_token_data_by_resource_server()


def rewrite(path: Path, **changes: Any) -> TokenStorageData:
    """Change the gateway's stored token data (e.g. expires_at_seconds) as time would."""
    data = stored(path)[GATEWAY].to_dict(include_extra=True)
    updated = TokenStorageData.from_dict({**data, **changes})
    helper._save_tokens(path, {GATEWAY: updated}, replace=False)
    return updated


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = helper.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_authenticate_exchanges_the_code_from_stdin(
    fake: FakeGlobusAuth, tokens_file: Path
) -> None:
    """The guide's `python inference_auth_token.py authenticate`, the code typed on stdin."""
    env = dict(os.environ, **fake.env, INFERENCE_AUTH_TOKENS=str(tokens_file), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "authenticate"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    url = login_url(process, timeout_s=60)
    query = parse_qs(urlsplit(url).query)
    assert query["client_id"] == [SOPHIA.client_id]
    assert SOPHIA.scope in query["scope"][0].split()
    assert query["access_type"] == ["offline"]  # refresh tokens asked for
    process.stdin.write(fake.approve(url, "jdoe@anl.gov") + "\n")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Logged in as jdoe@anl.gov" in out
    tokens = stored(tokens_file)
    assert set(tokens) == {"auth.globus.org", GATEWAY}
    gateway = tokens[GATEWAY]
    assert gateway.refresh_token and fake.is_active(gateway.access_token)
    assert gateway.identity_id == tokens["auth.globus.org"].identity_id
    assert gateway.access_token not in out + err
    assert mode(tokens_file) == 0o600 and mode(tokens_file.parent) == 0o700

    printed = subprocess.run(
        [sys.executable, str(SCRIPT), "get_access_token"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout == gateway.access_token + "\n"


def test_a_valid_token_is_printed_without_calling_globus(
    login: Login, fake: FakeGlobusAuth, tokens_file: Path
) -> None:
    login()
    fake.reset_counts()
    assert helper.get_access_token() == stored(tokens_file)[GATEWAY].access_token
    assert sum(fake.calls.values()) == 0


def test_an_expired_access_token_is_refreshed_without_a_login(
    login: Login, fake: FakeGlobusAuth, tokens_file: Path
) -> None:
    login()
    old = rewrite(tokens_file, expires_at_seconds=int(time.time()) - 10)
    fake.reset_counts()
    token = helper.get_access_token()
    assert token != old.access_token and fake.is_active(token)
    assert fake.calls["POST /v2/oauth2/token"] == 1
    saved = stored(tokens_file)[GATEWAY]
    assert saved.access_token == token and saved.expires_at_seconds > time.time() + 3000
    assert saved.identity_id == old.identity_id and saved.extra == old.extra
    assert mode(tokens_file) == 0o600
    assert helper.get_access_token() == token and fake.calls["POST /v2/oauth2/token"] == 1


def test_a_refused_refresh_says_to_log_in_again_with_force(
    login: Login, fake: FakeGlobusAuth, tokens_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    login()
    data = rewrite(tokens_file, expires_at_seconds=int(time.time()) - 10)
    assert data.refresh_token
    fake.expire_refresh_token(data.refresh_token)
    status, out, err = run_cli(capsys, "get_access_token")
    assert (status, out) == (1, "")
    assert "Globus Auth refused to refresh your access token (HTTP 400" in err
    assert "visit https://app.globus.org/logout" in err
    assert "`python inference_auth_token.py authenticate --force`" in err
    assert "Traceback" not in err


def test_a_login_older_than_the_policy_says_to_log_in_again(
    login: Login, fake: FakeGlobusAuth, tokens_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    login()
    rewrite(tokens_file, authenticated_at=time.time() - 8 * 86400)
    fake.reset_counts()
    status, out, err = run_cli(capsys, "get_access_token")
    assert (status, out) == (1, "")
    assert "is 8 days old, and sophia asks for a new login every 7 days" in err
    assert "Permission denied from internal policies" in err
    assert "authenticate --force" in err and "https://app.globus.org/logout" in err
    assert sum(fake.calls.values()) == 0


def test_no_stored_tokens_says_to_authenticate(
    tokens_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "get_access_token")
    assert (status, out) == (1, "")
    assert f"No stored tokens for sophia in {tokens_file}" in err
    assert "run `python inference_auth_token.py authenticate` first" in err
    with pytest.raises(helper.NotAuthenticated):
        helper.get_access_token()


def test_authenticate_with_working_tokens_does_not_log_in_again(
    login: Login, fake: FakeGlobusAuth, tokens_file: Path
) -> None:
    login()
    before = stored(tokens_file)[GATEWAY]

    def no_login(url: str) -> str:
        raise AssertionError("asked for a login")

    said: list[str] = []
    helper.authenticate(ask_code=no_login, say=said.append)
    assert said[0].startswith("Already logged in as jdoe@anl.gov")
    assert "authenticate --force" in said[0]
    assert stored(tokens_file)[GATEWAY].access_token == before.access_token


def test_another_identity_is_refused_and_force_switches(
    login: Login, fake: FakeGlobusAuth, tokens_file: Path
) -> None:
    login("alice@anl.gov")
    alice = rewrite(tokens_file, expires_at_seconds=int(time.time()) - 10)
    assert alice.refresh_token
    fake.expire_refresh_token(alice.refresh_token)  # so `authenticate` logs in again
    fake.revoked.clear()
    with pytest.raises(helper.IdentityMismatch) as refused:
        login("bob@anl.gov")
    message = str(refused.value)
    assert "You logged in as bob@anl.gov" in message
    assert f"holds the tokens of alice@anl.gov (identity {alice.identity_id})" in message
    assert "nothing was stored" in message and "authenticate --force" in message
    assert stored(tokens_file)[GATEWAY].to_dict() == alice.to_dict()
    assert len(fake.revoked) == 4  # bob's unused access and refresh tokens, both servers

    said = login("bob@anl.gov", force=True)
    assert said == [
        f"Logged in as bob@anl.gov. Tokens stored in {tokens_file} (readable by you only)."
    ]
    bob = stored(tokens_file)[GATEWAY]
    assert bob.identity_id != alice.identity_id and bob.extra["username"] == "bob@anl.gov"
    assert alice.access_token in fake.revoked
    assert mode(tokens_file) == 0o600


def test_a_wrong_code_stores_nothing(fake: FakeGlobusAuth, tokens_file: Path) -> None:
    with pytest.raises(helper.TokenHelperError, match="refused the authorization code"):
        helper.authenticate(ask_code=lambda url: "not-a-code", say=print)
    with pytest.raises(helper.TokenHelperError, match="No authorization code was entered"):
        helper.authenticate(ask_code=lambda url: "", say=print)
    assert not tokens_file.exists()


def test_logout_revokes_and_deletes(
    login: Login, fake: FakeGlobusAuth, tokens_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    login()
    tokens = stored(tokens_file)
    status, out, err = run_cli(capsys, "logout")
    assert status == 0, err
    assert f"Revoked the tokens of jdoe@anl.gov and deleted {tokens_file}" in out
    assert not tokens_file.exists()
    every = [t for d in tokens.values() for t in (d.access_token, d.refresh_token) if t]
    assert sorted(fake.revoked) == sorted(every) and len(every) == 4
    assert not any(fake.is_active(token) for token in every)
    status, out, _ = run_cli(capsys, "logout")
    assert status == 0 and "nothing to log out of" in out


def test_time_until_expiration_has_units(
    login: Login, tokens_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    login()
    status, out, _ = run_cli(capsys, "get_time_until_token_expiration")
    assert status == 0 and out.startswith("The access token expires in 47 h 59 min")
    status, out, _ = run_cli(capsys, "get_time_until_token_expiration", "--units", "hours")
    assert status == 0 and 47.9 < float(out) <= 48
    rewrite(tokens_file, expires_at_seconds=int(time.time()) - 3700)
    status, out, _ = run_cli(capsys, "get_time_until_token_expiration")
    assert out.startswith("The access token expired 1 h 01 min ago")


def test_tokens_default_to_globus_sdks_app_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERENCE_AUTH_TOKENS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".globus" / "app" / SOPHIA.client_id / "inference_app" / "tokens.json"
    assert helper.token_file(SOPHIA) == expected


# --- the local deployment and the config ------------------------------------------------
def test_local_cluster_prints_the_key_make_deploy_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "token_helper.yaml"
    key_file = tmp_path / "local-api-key"
    config.write_text(
        yaml.safe_dump(
            {
                "default": "local",
                "clusters": {"local": {"kind": "api_key", "api_key_file": str(key_file)}},
            }
        )
    )
    monkeypatch.setenv("INFERENCE_AUTH_CONFIG", str(config))
    status, out, err = run_cli(capsys, "get_access_token")
    assert status == 1 and f"No API key at {key_file}" in err and "make deploy" in err
    key_file.write_text("ie-secret\n")
    assert run_cli(capsys, "get_access_token") == (0, "ie-secret\n", "")
    status, out, _ = run_cli(capsys, "get_time_until_token_expiration")
    assert status == 0 and "does not expire" in out


def test_the_local_entry_reads_where_make_deploy_writes(
    tokens_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCE_AUTH_CLUSTER", "local")
    local = helper.load_cluster()
    assert isinstance(local, helper.ApiKeyCluster)
    assert local.api_key_file == LocalDeployment(ROOT, "local").key_file
    slurm = helper.load_cluster("local-slurm")
    assert isinstance(slurm, helper.ApiKeyCluster)
    assert slurm.api_key_file == LocalDeployment(ROOT, "local-slurm").key_file


def test_built_in_settings_equal_the_config_file() -> None:
    """A downloaded copy (no config beside it) must log in exactly as the bundle's does."""
    config = yaml.safe_load(helper.CONFIG_FILE.read_text())
    assert config["default"] == helper.BUILT_IN_CONFIG["default"]
    assert config["clusters"]["sophia"] == helper.BUILT_IN_CONFIG["clusters"]["sophia"]


def test_a_copy_without_config_uses_the_built_in_settings(tmp_path: Path) -> None:
    """The guide's users download the script alone: it must still know the service."""
    shutil.copy2(SCRIPT, tmp_path)
    env = dict(os.environ, INFERENCE_AUTH_TOKENS=str(tmp_path / "none.json"))
    for name in ("INFERENCE_AUTH_CLUSTER", "INFERENCE_AUTH_CONFIG"):
        env.pop(name, None)

    def get_access_token(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "inference_auth_token.py", "get_access_token"],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
        )

    got = get_access_token()
    assert got.returncode == 1 and got.stdout == ""
    assert got.stderr.startswith("error: No stored tokens for sophia")
    got = get_access_token(INFERENCE_AUTH_CLUSTER="local")
    assert got.returncode == 1 and "no cluster 'local'" in got.stderr
    assert "the built-in settings" in got.stderr and "known: sophia" in got.stderr


def test_a_config_mistake_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "token_helper.yaml"
    config.write_text(yaml.safe_dump({"default": "x", "clusters": {"x": {"kind": "globsu"}}}))
    monkeypatch.setenv("INFERENCE_AUTH_CONFIG", str(config))
    status, out, err = run_cli(capsys, "get_access_token")
    assert status == 1
    assert err == f"error: {config}: clusters.x.kind: 'globsu'; use globus or api_key\n"


def test_installed_as_a_console_command() -> None:
    command = Path(sys.executable).parent / "inference-auth-token"
    got = subprocess.run([str(command), "--help"], capture_output=True, text=True, check=True)
    for name in ("authenticate", "get_access_token", "get_time_until_token_expiration", "logout"):
        assert name in got.stdout
