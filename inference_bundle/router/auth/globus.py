"""Mode `globus`: bearer tokens introspected with Globus Auth, groups read from Globus Groups."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import globus_sdk
from globus_sdk.config import get_service_url
from globus_sdk.exc import GlobusAPIError, NetworkError
from globus_sdk.scopes import GroupsScopes

from inference_bundle.config.settings import GlobusAuthSettings
from inference_bundle.router.auth.cache import ExpiringCache
from inference_bundle.router.auth.callers import (
    Caller,
    admin_names,
    bearer_credential,
    digest,
    unauthorized,
)
from inference_bundle.router.errors import APIError

log = logging.getLogger(__name__)

_HOW_TO_GET_ONE = "get a token with `python inference_auth_token.py get_access_token`."
_GROUPS_SCOPE = str(GroupsScopes.view_my_groups_and_memberships)  # a Scope object is refused
_STRIPES = 64


@dataclass(frozen=True)
class _Rejection:
    """A cached 401: rebuilt on each use, since one exception object must not be raised twice."""

    message: str
    code: str

    def error(self) -> APIError:
        return unauthorized(self.message, code=self.code, invalid=True)


_INACTIVE = _Rejection(
    "Your access token is not valid: Globus Auth does not know it, or it was revoked. "
    "Get a fresh one with `python inference_auth_token.py get_access_token`, and if that "
    "fails, log in again with `python inference_auth_token.py authenticate --force`.",
    "invalid_token",
)
_EXPIRED = _Rejection(
    "Your access token has expired. Get a fresh one with "
    "`python inference_auth_token.py get_access_token`.",
    "expired_token",
)
_NO_IDENTITY = _Rejection(
    "Your access token does not belong to a user identity. Use a token from "
    "`python inference_auth_token.py get_access_token`, not a client's own token.",
    "invalid_token",
)


def _unavailable(why: str) -> APIError:
    return APIError(
        503,
        f"The router could not check your token: {why}. Try again in a minute; if this "
        "persists, tell the operators.",
        type="server_error",
        code="auth_unavailable",
        headers={"Retry-After": "30"},
    )


class GlobusAuthenticator:
    """Introspects each new token once, then trusts the cached outcome for cache_ttl_s.

    A cached Caller never outlives its token's `exp`. Concurrent first requests with one
    token make one introspection. Failures to reach Globus are 503s and are not cached.
    A user named in `admins` (`auth.admins`) is an admin caller.
    """

    def __init__(
        self,
        settings: GlobusAuthSettings,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.time,
        max_cache_entries: int = 10_000,
        http_timeout_s: float = 10.0,
        admins: Iterable[str] = (),
    ) -> None:
        self._client_id = settings.client_id
        self._secret = client_secret
        self._ttl = settings.cache_ttl_s
        self._names_by_id = {gid.lower(): name for name, gid in settings.groups.items()}
        self._admins = admin_names(admins)
        self._clock = clock
        self._timeout = http_timeout_s
        # Resolved once, so every thread's clients talk to the same place.
        self._auth_url = get_service_url("auth")
        self._groups_url = get_service_url("groups")
        self._cache: ExpiringCache[Caller | _Rejection] = ExpiringCache(max_cache_entries)
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._local = threading.local()

    def authenticate(self, authorization: str | None) -> Caller:
        """The token's user with their mapped groups, or APIError(401) (503 if Globus fails)."""
        token = bearer_credential(authorization, _HOW_TO_GET_ONE)
        key = digest(token)
        outcome = self._cache.get(key, self._clock())
        if outcome is None:
            with self._stripes[int(key[:8], 16) % _STRIPES]:
                outcome = self._cache.get(key, self._clock())
                if outcome is None:
                    outcome, until = self._check(token, key[:12])
                    self._cache.put(key, outcome, until)
        if isinstance(outcome, _Rejection):
            raise outcome.error()
        return outcome

    def authenticate_at_once(self, authorization: str | None) -> Caller | None:
        """The cached outcome for this token, or None: it must be introspected."""
        key = digest(bearer_credential(authorization, _HOW_TO_GET_ONE))
        outcome = self._cache.get(key, self._clock())
        if isinstance(outcome, _Rejection):
            raise outcome.error()
        return outcome

    def _check(self, token: str, ref: str) -> tuple[Caller | _Rejection, float]:
        """Ask Globus Auth; `ref` names the token in logs without revealing it."""
        now = self._clock()
        data = self._introspect(token)
        exp = data.get("exp")
        username = data.get("username")
        if data.get("active") is not True:
            log.info("token %s is not active", ref)
            return _INACTIVE, now + self._ttl
        if isinstance(exp, int | float) and exp <= now:
            log.info("token %s has expired", ref)
            return _EXPIRED, now + self._ttl
        if not isinstance(username, str) or not username:
            log.info("token %s carries no username", ref)
            return _NO_IDENTITY, now + self._ttl
        groups = self._groups(token, username) if self._names_by_id else frozenset()
        sub = data.get("sub")
        caller = Caller(
            user=username,
            identity_id=sub if isinstance(sub, str) else None,
            groups=groups,
            admin=username.casefold() in self._admins,
        )
        until = now + self._ttl
        if isinstance(exp, int | float):
            until = min(until, float(exp))
        log.info("token %s belongs to %s, groups %s", ref, username, sorted(groups) or "none")
        return caller, until

    def _introspect(self, token: str) -> dict[str, Any]:
        try:
            response = self._auth_client().oauth2_token_introspect(token, include="identity_set")
        except GlobusAPIError as err:
            if err.http_status in (401, 403):
                log.error(
                    "Globus Auth refused the router's credentials: check auth.globus.client_id "
                    "(%s) and the client secret in the environment",
                    self._client_id,
                )
                raise _unavailable("Globus Auth refused the router's own credentials") from None
            log.warning("Globus Auth answered %s to an introspection", err.http_status)
            raise _unavailable(f"Globus Auth answered {err.http_status}") from None
        except NetworkError as err:
            log.warning("cannot reach Globus Auth at %s: %s", self._auth_url, type(err).__name__)
            raise _unavailable("Globus Auth could not be reached") from None
        data = response.data
        if not isinstance(data, dict):
            raise _unavailable("Globus Auth gave an answer the router does not understand")
        return data

    def _groups(self, token: str, username: str) -> frozenset[str]:
        """The catalog names of the configured groups the token's user is an active member of.

        A token without consent for the Groups scope yields no groups (so policies that
        need one answer 403) rather than a 401 for every cluster.
        """
        try:
            dependent = self._auth_client().oauth2_get_dependent_tokens(token, scope=_GROUPS_SCOPE)
            groups_token = dependent.by_resource_server[GroupsScopes.resource_server]
            groups_client = globus_sdk.GroupsClient(
                base_url=self._groups_url,
                authorizer=globus_sdk.AccessTokenAuthorizer(groups_token["access_token"]),
                transport=self._transport(),
                retry_config=self._retry_config(),
            )
            my_groups = groups_client.get_my_groups(statuses="active")
        except GlobusAPIError as err:
            if err.http_status == 429 or err.http_status >= 500:
                raise _unavailable(f"Globus answered {err.http_status}") from None
            log.warning(
                "cannot read the Globus groups of %s (HTTP %s): counting none",
                username,
                err.http_status,
            )
            return frozenset()
        except KeyError:
            log.warning("no Groups token for %s (consent missing?): counting none", username)
            return frozenset()
        except NetworkError:
            raise _unavailable("Globus Groups could not be reached") from None
        names = set()
        for group in my_groups:
            name = self._names_by_id.get(str(group.get("id", "")).lower())
            if name is not None:
                names.add(name)
        return frozenset(names)

    # requests sessions are not documented as thread-safe: each worker thread gets its own.
    def _transport(self) -> globus_sdk.transport.RequestsTransport:
        transport: globus_sdk.transport.RequestsTransport | None = getattr(
            self._local, "transport", None
        )
        if transport is None:
            transport = globus_sdk.transport.RequestsTransport(http_timeout=self._timeout)
            self._local.transport = transport
        return transport

    def _auth_client(self) -> globus_sdk.ConfidentialAppAuthClient:
        client: globus_sdk.ConfidentialAppAuthClient | None = getattr(self._local, "auth", None)
        if client is None:
            client = globus_sdk.ConfidentialAppAuthClient(
                self._client_id,
                self._secret,
                base_url=self._auth_url,
                transport=self._transport(),
                retry_config=self._retry_config(),
            )
            self._local.auth = client
        return client

    @staticmethod
    def _retry_config() -> globus_sdk.transport.RetryConfig:
        # A user is waiting: one quick retry, not the SDK's five with backoff up to 10 s.
        return globus_sdk.transport.RetryConfig(max_retries=1, max_sleep=1)
