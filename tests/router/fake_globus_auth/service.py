"""The fake's Globus Auth itself: what it has issued, and its answer to each call.

The HTTP side (a server on 127.0.0.1 and the test-facing registration methods) is
server.FakeGlobusAuth, which is this service plus its life cycle.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

AUTH_RESOURCE_SERVER = "auth.globus.org"
OIDC_SCOPES = {"openid", "profile", "email"}  # scopes of Globus Auth itself

GROUPS_RESOURCE_SERVER = "groups.api.globus.org"
GROUPS_SCOPE = "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"


@dataclass
class FakeIdentity:
    """What a registered token stands for."""

    username: str
    identity_id: str
    exp: float
    active: bool = True
    groups: tuple[str, ...] = ()  # Globus group ids
    groups_consent: bool = True  # False: the dependent grant returns no Groups token
    scope: str = "openid profile email"
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the introspection
    resource_server: str = AUTH_RESOURCE_SERVER  # whose token it is (refresh answers say it)


@dataclass(frozen=True)
class PendingCode:
    """An authorization code Globus Auth showed after a login, not yet exchanged."""

    client_id: str
    challenge: str
    redirect_uri: str
    scopes: tuple[str, ...]
    username: str
    identity_id: str


class GlobusAuthService:
    """The tokens, codes and groups the fake knows, and the answer to each Globus Auth call."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.calls: Counter[str] = Counter()  # "POST /v2/oauth2/token/introspect" -> count
        self.group_names: dict[str, str] = {}  # group id -> display name in my_groups
        self._tokens: dict[str, FakeIdentity] = {}
        self._refresh: dict[str, FakeIdentity] = {}
        self._groups_tokens: dict[str, FakeIdentity] = {}
        self._codes: dict[str, PendingCode] = {}
        self._identity_ids: dict[str, str] = {}  # username -> its stable identity id
        self.revoked: list[str] = []  # tokens revoked, in order
        self.access_lifetime_s = 172800.0  # of tokens issued by a code exchange (48 h)
        self._failures: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()

    # --- answers, called by the handler with the lock free --------------------------------
    def answer(
        self, method: str, path: str, headers: dict[str, str], form: dict[str, str]
    ) -> tuple[int, Any]:
        with self._lock:
            self.calls[f"{method} {path}"] += 1
            for i, (status, only) in enumerate(self._failures):
                if only is None or only == path:
                    del self._failures[i]
                    return status, {"code": "Fake", "message": f"fake failure {status}"}
        if method == "POST" and path == "/v2/oauth2/token/introspect":
            return self._client_only(headers) or self._introspect(form)
        if method == "POST" and path == "/v2/oauth2/token":
            return self._grant(headers, form)
        if method == "POST" and path == "/v2/oauth2/token/revoke":
            return self._revoke(form)
        if method == "GET" and path == "/v2/oauth2/userinfo":
            return self._userinfo(headers)
        if method == "GET" and path == "/v2/groups/my_groups":
            return self._my_groups(headers)
        return 404, {"code": "NotFound", "message": f"the fake has no {method} {path}"}

    def _client_only(self, headers: dict[str, str]) -> tuple[int, Any] | None:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return 401, {"error": "invalid_client", "errors": [{"code": "UNAUTHORIZED"}]}
        return None

    def _introspect(self, form: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            who = self._tokens.get(form.get("token", ""))
        # It answers what was registered: a token whose exp has passed but is still marked
        # active comes back active (Globus Auth would say inactive), so that a test can
        # check that the router looks at exp itself.
        if who is None or not who.active:
            return 200, {"active": False}
        body: dict[str, Any] = {
            "active": True,
            "token_type": "Bearer",
            "scope": who.scope,
            "client_id": str(uuid.uuid4()),
            "username": who.username,
            "name": who.username.split("@")[0],
            "email": who.username,
            "sub": who.identity_id,
            "exp": int(who.exp),
            "iat": int(time.time()),
            "nbf": int(time.time()),
            "aud": [self.client_id],
            "iss": "https://auth.globus.org",
        }
        if "identity_set" in form.get("include", "").split(","):
            body["identity_set"] = [who.identity_id]
        body.update(who.extra)
        return 200, body

    def _grant(self, headers: dict[str, str], form: dict[str, str]) -> tuple[int, Any]:
        grant = form.get("grant_type")
        if grant == "urn:globus:auth:grant_type:dependent_token":
            refused = self._client_only(headers)
            if refused:
                return refused
            with self._lock:
                who = self._tokens.get(form.get("token", ""))
            if who is None or not who.active:
                return 401, {"error": "invalid_grant"}
            if not who.groups_consent or GROUPS_SCOPE not in form.get("scope", GROUPS_SCOPE):
                return 200, []
            groups_token = "GT-" + secrets.token_urlsafe(24)
            with self._lock:
                self._groups_tokens[groups_token] = who
            return 200, [
                {
                    "access_token": groups_token,
                    "scope": GROUPS_SCOPE,
                    "resource_server": GROUPS_RESOURCE_SERVER,
                    "token_type": "Bearer",
                    "expires_in": 172800,
                }
            ]
        if grant == "refresh_token":
            with self._lock:
                who = self._refresh.get(form.get("refresh_token", ""))
            if who is None:
                return 400, {"error": "invalid_grant"}
            access = self._issue(who, expires_in=3600)
            return 200, {
                "access_token": access,
                "refresh_token": form["refresh_token"],
                "expires_in": 3600,
                "resource_server": who.resource_server,
                "scope": who.scope,
                "token_type": "Bearer",
                "other_tokens": [],
            }
        if grant == "authorization_code":
            return self._exchange_code(form)
        return 400, {"error": "unsupported_grant_type"}

    def _issue(self, who: FakeIdentity, expires_in: float) -> str:
        """A fresh active access token standing for the same identity, scope and server."""
        token = "AT-" + secrets.token_urlsafe(24)
        issued = dataclasses.replace(who, exp=time.time() + expires_in, active=True)
        with self._lock:
            self._tokens[token] = issued
        return token

    def _exchange_code(self, form: dict[str, str]) -> tuple[int, Any]:
        """The native-app code exchange: no client secret, the PKCE verifier proves the login."""
        with self._lock:
            pending = self._codes.pop(form.get("code", ""), None)
        if pending is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if (
            challenge.decode().rstrip("=") != pending.challenge
            or form.get("client_id") != pending.client_id
            or form.get("redirect_uri") != pending.redirect_uri
        ):
            return 400, {"error": "invalid_grant", "error_description": "PKCE check failed"}
        by_server: dict[str, list[str]] = {}
        for scope in pending.scopes:
            by_server.setdefault(_resource_server_of(scope), []).append(scope)
        answers = [self._token_answer(pending, server, s) for server, s in by_server.items()]
        first = next(
            (a for a in answers if a["resource_server"] == AUTH_RESOURCE_SERVER), answers[0]
        )
        return 200, {**first, "other_tokens": [a for a in answers if a is not first]}

    def _token_answer(self, pending: PendingCode, server: str, scopes: list[str]) -> dict[str, Any]:
        """One resource server's access and refresh tokens, as a token response lists them."""
        who = FakeIdentity(
            username=pending.username,
            identity_id=pending.identity_id,
            exp=0.0,
            scope=" ".join(scopes),
            resource_server=server,
        )
        access = self._issue(who, expires_in=self.access_lifetime_s)
        refresh = "RT-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[refresh] = who
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": int(self.access_lifetime_s),
            "resource_server": server,
            "scope": who.scope,
            "token_type": "Bearer",
        }

    def _revoke(self, form: dict[str, str]) -> tuple[int, Any]:
        """Revocation: the access token turns inactive, the refresh token stops refreshing."""
        token = form.get("token", "")
        with self._lock:
            self.revoked.append(token)
            self._refresh.pop(token, None)
            if token in self._tokens:
                self._tokens[token].active = False
        return 200, {"active": False}

    def _userinfo(self, headers: dict[str, str]) -> tuple[int, Any]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._lock:
            who = self._tokens.get(token) if scheme == "Bearer" else None
        if who is None or not who.active or "openid" not in who.scope.split():
            return 401, {"code": "UNAUTHORIZED", "detail": "needs an active openid token"}
        return 200, {
            "sub": who.identity_id,
            "preferred_username": who.username,
            "name": who.username.split("@")[0],
            "email": who.username,
        }

    def _my_groups(self, headers: dict[str, str]) -> tuple[int, Any]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._lock:
            who = self._groups_tokens.get(token) if scheme == "Bearer" else None
        if who is None:
            return 401, {"code": "AUTHENTICATION_ERROR", "detail": "bad groups token"}
        return 200, [
            {
                "id": gid,
                "name": self.group_names.get(gid, gid),
                "my_memberships": [
                    {
                        "identity_id": who.identity_id,
                        "username": who.username,
                        "role": "member",
                        "status": "active",
                    }
                ],
            }
            for gid in who.groups
        ]


def _resource_server_of(scope: str) -> str:
    """Which resource server a scope string belongs to, as Globus Auth resolves it."""
    if scope in OIDC_SCOPES:
        return AUTH_RESOURCE_SERVER
    if scope.startswith("https://auth.globus.org/scopes/"):
        return scope.split("/")[4]
    if scope.startswith("urn:globus:auth:scope:"):
        return scope.split(":")[4]
    return scope
