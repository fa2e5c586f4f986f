"""Auth in Globus mode: tokens against a fake Globus Auth on 127.0.0.1, and their cache."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_bundle.router.auth import (
    AuthConfigError,
    Caller,
    GlobusAuthenticator,
    build_authenticator,
    may_use,
)
from inference_bundle.router.errors import APIError
from tests.router.auth_helpers import (
    AURORAGPT_ID,
    SECRET_ENV,
    STAFF_ID,
    UNMAPPED_ID,
    Clock,
    globus_settings,
    rejected,
)
from tests.router.fake_globus_auth import FakeGlobusAuth


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGlobusAuth]:
    with FakeGlobusAuth() as server:
        server.apply_env(monkeypatch)
        monkeypatch.setenv(SECRET_ENV, server.client_secret)
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(fake: FakeGlobusAuth, clock: Clock) -> GlobusAuthenticator:
    settings = globus_settings(fake)
    assert settings.globus is not None
    return GlobusAuthenticator(settings.globus, fake.client_secret, clock=clock)


# --- Globus mode: who is calling ----------------------------------------------------------


def test_valid_token_gives_username_identity_and_mapped_groups(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator
) -> None:
    token = fake.add_token(
        "jdoe@anl.gov", identity_id="id-jdoe", groups=[AURORAGPT_ID, UNMAPPED_ID]
    )
    caller = auth.authenticate(f"Bearer {token}")
    assert caller == Caller(
        user="jdoe@anl.gov", identity_id="id-jdoe", groups=frozenset({"auroragpt"})
    )
    assert fake.calls["GET /v2/groups/my_groups"] == 1


def test_build_authenticator_reads_the_secret_from_the_named_variable(
    fake: FakeGlobusAuth, tmp_path: Path
) -> None:
    token = fake.add_token("jdoe@anl.gov", groups=[STAFF_ID])
    auth = build_authenticator(globus_settings(fake), tmp_path)
    assert auth.authenticate(f"bearer {token}").groups == {"alcf-staff"}


def test_unset_secret_variable_is_a_clear_error(
    fake: FakeGlobusAuth, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(AuthConfigError, match=f"auth.globus.client_secret_env: .*{SECRET_ENV}"):
        build_authenticator(globus_settings(fake), tmp_path)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_credentials"),
        ("", "missing_credentials"),
        ("Basic dXNlcjpwYXNz", "malformed_credentials"),
        ("Bearer", "malformed_credentials"),
        ("Bearer two words", "malformed_credentials"),
        ("Bearer not-a-token-globus-knows", "invalid_token"),
    ],
)
def test_missing_malformed_or_unknown_credentials_are_401(
    auth: GlobusAuthenticator, header: str | None, code: str
) -> None:
    error = rejected(auth, header)
    assert error.code == code
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    assert "inference_auth_token.py get_access_token" in error.message


def test_inactive_token_is_401(fake: FakeGlobusAuth, auth: GlobusAuthenticator) -> None:
    token = fake.add_token("jdoe@anl.gov", active=False)
    error = rejected(auth, f"Bearer {token}")
    assert error.code == "invalid_token"
    assert error.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_expired_token_is_401_even_if_reported_active(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator
) -> None:
    token = fake.add_token("jdoe@anl.gov", exp=time.time() - 5)
    error = rejected(auth, f"Bearer {token}")
    assert error.code == "expired_token"
    assert "has expired" in error.message


def test_token_without_groups_consent_has_no_groups(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator
) -> None:
    token = fake.add_token("jdoe@anl.gov", groups=[AURORAGPT_ID], groups_consent=False)
    assert auth.authenticate(f"Bearer {token}").groups == frozenset()


def test_no_configured_groups_means_no_groups_calls(fake: FakeGlobusAuth, clock: Clock) -> None:
    settings = globus_settings(fake, groups={})
    assert settings.globus is not None
    auth = GlobusAuthenticator(settings.globus, fake.client_secret, clock=clock)
    token = fake.add_token("jdoe@anl.gov", groups=[AURORAGPT_ID])
    assert auth.authenticate(f"Bearer {token}").groups == frozenset()
    assert fake.calls["POST /v2/oauth2/token"] == 0


def test_globus_outage_is_503_and_not_cached(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator
) -> None:
    token = fake.add_token("jdoe@anl.gov")
    fake.fail_next(503, times=2)  # the first try and its one retry
    error = rejected(auth, f"Bearer {token}", status=503)
    assert error.headers["Retry-After"]
    assert auth.authenticate(f"Bearer {token}").user == "jdoe@anl.gov"


def test_groups_outage_is_503_and_not_cached(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator
) -> None:
    token = fake.add_token("jdoe@anl.gov", groups=[AURORAGPT_ID])
    fake.fail_next(502, times=2, path="/v2/groups/my_groups")
    rejected(auth, f"Bearer {token}", status=503)
    assert auth.authenticate(f"Bearer {token}").groups == {"auroragpt"}


def test_groups_refusal_counts_as_no_groups(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator
) -> None:
    token = fake.add_token("jdoe@anl.gov", groups=[AURORAGPT_ID])
    fake.fail_next(403, path="/v2/groups/my_groups")
    assert auth.authenticate(f"Bearer {token}") == Caller(
        user="jdoe@anl.gov", identity_id=fake.identity(token).identity_id, groups=frozenset()
    )


def test_refused_router_credentials_are_503_naming_no_secret(
    fake: FakeGlobusAuth, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    settings = globus_settings(fake)
    assert settings.globus is not None
    auth = GlobusAuthenticator(settings.globus, "wrong-secret-value", clock=clock)
    token = fake.add_token("jdoe@anl.gov")
    with caplog.at_level(logging.DEBUG):
        error = rejected(auth, f"Bearer {token}", status=503)
    assert "router's own credentials" in error.message
    assert "auth.globus.client_id" in caplog.text
    assert "wrong-secret-value" not in caplog.text + error.message


# --- Globus mode: the cache ---------------------------------------------------------------


def test_cache_holds_for_the_ttl_then_introspects_again(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator, clock: Clock
) -> None:
    token = fake.add_token("jdoe@anl.gov", groups=[AURORAGPT_ID])
    first = auth.authenticate(f"Bearer {token}")
    clock.now += 299
    assert auth.authenticate(f"Bearer {token}") == first
    assert fake.introspections == 1
    clock.now += 2
    assert auth.authenticate(f"Bearer {token}") == first
    assert fake.introspections == 2


def test_only_a_cached_outcome_is_given_at_once(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator, clock: Clock
) -> None:
    token = fake.add_token("jdoe@anl.gov", groups=[AURORAGPT_ID])
    assert auth.authenticate_at_once(f"Bearer {token}") is None  # needs Globus: a thread
    assert fake.introspections == 0
    first = auth.authenticate(f"Bearer {token}")
    assert auth.authenticate_at_once(f"Bearer {token}") == first
    rejected(auth, "Bearer unknown-token")
    with pytest.raises(APIError) as caught:
        auth.authenticate_at_once("Bearer unknown-token")
    assert caught.value.status == 401
    clock.now += 301
    assert auth.authenticate_at_once(f"Bearer {token}") is None  # the TTL is over
    assert fake.introspections == 2


def test_cache_never_outlives_the_token(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator, clock: Clock
) -> None:
    token = fake.add_token("jdoe@anl.gov", exp=clock.now + 10)
    auth.authenticate(f"Bearer {token}")
    clock.now += 11
    assert rejected(auth, f"Bearer {token}").code == "expired_token"
    assert fake.introspections == 2


def test_a_401_is_cached_too(fake: FakeGlobusAuth, auth: GlobusAuthenticator) -> None:
    for _ in range(3):
        rejected(auth, "Bearer unknown-token")
    assert fake.introspections == 1


def test_revocation_is_seen_after_the_ttl(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator, clock: Clock
) -> None:
    token = fake.add_token("jdoe@anl.gov")
    auth.authenticate(f"Bearer {token}")
    fake.identity(token).active = False
    auth.authenticate(f"Bearer {token}")  # still cached
    clock.now += 301
    rejected(auth, f"Bearer {token}")


def test_tiny_real_ttl(fake: FakeGlobusAuth, tmp_path: Path) -> None:
    auth = build_authenticator(globus_settings(fake, cache_ttl_s=0.05), tmp_path)
    token = fake.add_token("jdoe@anl.gov")
    auth.authenticate(f"Bearer {token}")
    auth.authenticate(f"Bearer {token}")
    assert fake.introspections == 1
    time.sleep(0.06)  # fixed: the real-clock TTL must pass (no event to wait for)
    auth.authenticate(f"Bearer {token}")
    assert fake.introspections == 2


def test_concurrent_first_requests_introspect_once(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator
) -> None:
    token = fake.add_token("jdoe@anl.gov", groups=[AURORAGPT_ID])
    start = threading.Barrier(16)
    results: list[Caller] = []

    def call() -> None:
        start.wait(timeout=30)
        results.append(auth.authenticate(f"Bearer {token}"))

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "authentications still running after 60 s"
    assert len(results) == 16 and len(set(results)) == 1
    assert fake.introspections == 1


def test_cache_is_bounded(fake: FakeGlobusAuth, clock: Clock) -> None:
    settings = globus_settings(fake)
    assert settings.globus is not None
    auth = GlobusAuthenticator(
        settings.globus, fake.client_secret, clock=clock, max_cache_entries=2
    )
    tokens = [fake.add_token(f"u{i}@anl.gov") for i in range(3)]
    for token in tokens:
        auth.authenticate(f"Bearer {token}")
    auth.authenticate(f"Bearer {tokens[0]}")  # evicted by the third
    assert fake.introspections == 4


def test_tokens_never_reach_logs_or_messages(
    fake: FakeGlobusAuth, auth: GlobusAuthenticator, caplog: pytest.LogCaptureFixture
) -> None:
    good = fake.add_token("jdoe@anl.gov", groups=[AURORAGPT_ID])
    inactive = fake.add_token("jdoe@anl.gov", active=False)
    expired = fake.add_token("jdoe@anl.gov", exp=time.time() - 1)
    unknown = "AT-unknown-0123456789abcdef"
    messages = []
    with caplog.at_level(logging.DEBUG):
        auth.authenticate(f"Bearer {good}")
        for header in (
            f"Bearer {inactive}",
            f"Bearer {expired}",
            f"Bearer {unknown}",
            f"Token {unknown}",
            f"Bearer {unknown} extra",
        ):
            messages.append(rejected(auth, header).message)
    assert caplog.text  # something was logged, at every level
    for token in (good, inactive, expired, unknown):
        assert token not in caplog.text
        assert all(token not in m for m in messages)


# --- Globus mode: token, then policy -----------------------------------------------------


def test_end_to_end_token_then_policy(fake: FakeGlobusAuth, auth: GlobusAuthenticator) -> None:
    settings = globus_settings(fake)
    member = auth.authenticate(f"Bearer {fake.add_token('m@anl.gov', groups=[AURORAGPT_ID])}")
    other = auth.authenticate(f"Bearer {fake.add_token('o@anl.gov', groups=[STAFF_ID])}")
    assert may_use(member, settings, "sophia", ["auroragpt"])
    assert not may_use(other, settings, "sophia", ["auroragpt"])
