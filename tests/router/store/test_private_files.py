"""The router's log and records are its account's only (0600, folders 0700), or a named
group's too (0640, 2750); files an older router left looser are tightened at start-up."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inference_bundle.config.problems import SettingsError
from inference_bundle.config.settings import parse_settings
from inference_bundle.ops.local_inputs import api_key
from inference_bundle.ops.local_run import LocalDeployment
from inference_bundle.router.auth import create_api_key
from inference_bundle.router.store.private_files import OWNER_ONLY, file_access
from inference_bundle.router.store.state_folder import lock_state_folder
from tests.router.conftest import Harness


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """As most accounts have it: a file is 0644 unless its maker says otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loose(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_a_new_state_folder_and_its_records_are_the_accounts_only(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    make_harness()
    state = tmp_path / "router"
    assert mode(state) == 0o700
    created = [p for p in state.iterdir() if p.is_file()]
    assert {p.name for p in created} >= {"batches.db", "metrics-token"}
    assert {p.name: mode(p) for p in created} == {p.name: 0o600 for p in created}


def test_records_left_looser_are_tightened_at_start_up(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    state = tmp_path / "router"
    files = [loose(state / name) for name in ("batches.db-wal", "router.lock", "old.log")]
    state.chmod(0o755)
    token = loose(state / "metrics-token", "a-token")
    keys = tmp_path / "keys.json"
    make_harness()  # creates the keys file, then the router starts on it
    keys.chmod(0o644)
    make_harness()
    assert mode(state) == 0o700
    assert [mode(p) for p in [*files, token, keys]] == [0o600] * 5


def test_a_named_group_may_read_the_log_and_records_but_not_the_secrets(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    group = grp.getgrgid(os.getegid()).gr_name  # one this account is in
    state = tmp_path / "router"
    record = loose(state / "usage.jsonl")
    make_harness(file_group=group)
    assert mode(state) == 0o2750 and state.stat().st_gid == os.getegid()
    assert (mode(record), mode(state / "batches.db")) == (0o640, 0o640)
    assert mode(state / "metrics-token") == 0o600


def test_a_group_the_router_cannot_give_its_files_to_is_a_sentence_naming_the_field(
    tmp_path: Path,
) -> None:
    with pytest.raises(SettingsError) as raised:
        file_access("no-such-group-here", "config/router/local.yaml")
    [problem] = raised.value.problems
    assert (problem.file, problem.field) == ("config/router/local.yaml", "file_group")
    assert problem.message.startswith(
        "the router cannot give its files to the group 'no-such-group-here': there is no "
        "such group here. Name one of this account's groups ("
    )


def test_the_state_folders_lock_is_the_accounts_only(tmp_path: Path) -> None:
    lock = loose(tmp_path / "state" / "router.lock")
    handle = lock_state_folder(tmp_path / "state")
    try:
        assert mode(lock) == 0o600 and lock.read_text() == f"{os.getpid()}\n"
    finally:
        handle.close()


def test_a_local_deploys_log_settings_and_key_are_the_accounts_only(tmp_path: Path) -> None:
    run = LocalDeployment(tmp_path, "local")
    old_log = loose(run.log_file, "an older router's access log\n")
    settings_file = loose(run.settings_file)
    run.make_private(OWNER_ONLY)
    assert (mode(run.folder), mode(old_log), mode(settings_file)) == (0o700, 0o600, 0o600)
    old_log.unlink()
    with run.open_log(OWNER_ONLY) as log:
        log.write(b"started\n")
    assert mode(run.log_file) == 0o600
    keys = tmp_path / ".state" / "router" / "api-keys.json"
    settings = parse_settings(
        {
            "clusters": ["local"],
            "executor": "engine",
            "auth": {"mode": "keys", "keys_file": str(keys)},
        }
    )
    loose(run.key_file, create_api_key(keys, "me"))
    key = api_key(run, settings)
    assert run.key_file.read_text().strip() == key and mode(run.key_file) == 0o600
