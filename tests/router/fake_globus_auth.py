"""A fake Globus Auth and Groups service on 127.0.0.1, for tests that use globus_sdk unchanged.

    with FakeGlobusAuth() as fake:
        monkeypatch.setenv(...) for each item of fake.env   # or fake.apply_env(monkeypatch)
        token = fake.add_token("jdoe@anl.gov", groups=["<group id>"])
        ...
        assert fake.introspections == 1

It answers what globus_sdk calls: token introspection (`POST /v2/oauth2/token/introspect`),
the dependent-token and refresh-token grants (`POST /v2/oauth2/token`) and
`GET /v2/groups/my_groups`. Confidential calls must carry HTTP Basic with the client's id
and secret, as Globus Auth demands.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

GROUPS_RESOURCE_SERVER = "groups.api.globus.org"
GROUPS_SCOPE = "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"


class _EnvSetter(Protocol):
    def setenv(self, name: str, value: str) -> None: ...


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


class FakeGlobusAuth:
    """Start it, register tokens, point globus_sdk at `url`, count what was asked, stop it."""

    def __init__(self, client_id: str = "router-client-id", client_secret: str = "s3cret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.calls: Counter[str] = Counter()  # "POST /v2/oauth2/token/introspect" -> count
        self.group_names: dict[str, str] = {}  # group id -> display name in my_groups
        self._tokens: dict[str, FakeIdentity] = {}
        self._refresh: dict[str, FakeIdentity] = {}
        self._groups_tokens: dict[str, FakeIdentity] = {}
        self._failures: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ---------------------------------------------------------------------
    def start(self) -> FakeGlobusAuth:
        """Listen on a free port of 127.0.0.1, serving from a daemon thread."""
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},  # shutdown() waits up to one interval
            name="fake-globus-auth",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGlobusAuth:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The service root, e.g. http://127.0.0.1:41234/ (both Auth and Groups live here)."""
        if self._server is None:
            raise RuntimeError("FakeGlobusAuth is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    @property
    def env(self) -> dict[str, str]:
        """The globus_sdk environment variables that send it here."""
        return {"GLOBUS_SDK_SERVICE_URL_AUTH": self.url, "GLOBUS_SDK_SERVICE_URL_GROUPS": self.url}

    def apply_env(self, target: _EnvSetter) -> None:
        """Set `env` through e.g. pytest's monkeypatch, so it is undone after the test."""
        for name, value in self.env.items():
            target.setenv(name, value)

    # --- what it knows ------------------------------------------------------------------
    def add_token(
        self,
        username: str,
        *,
        token: str | None = None,
        identity_id: str | None = None,
        exp: float | None = None,
        expires_in: float = 3600,
        active: bool = True,
        groups: tuple[str, ...] | list[str] = (),
        groups_consent: bool = True,
    ) -> str:
        """Register an access token for `username` and return it (a fresh random one by default)."""
        token = token or "AT-" + secrets.token_urlsafe(24)
        identity = FakeIdentity(
            username=username,
            identity_id=identity_id or str(uuid.uuid4()),
            exp=exp if exp is not None else time.time() + expires_in,
            active=active,
            groups=tuple(groups),
            groups_consent=groups_consent,
        )
        with self._lock:
            self._tokens[token] = identity
        return token

    def add_refresh_token(self, username: str, *, token: str | None = None, **kwargs: Any) -> str:
        """Register a refresh token; each refresh grant issues a new access token like it."""
        access = self.add_token(username, **kwargs)
        refresh = token or "RT-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[refresh] = self._tokens[access]
        return refresh

    def identity(self, token: str) -> FakeIdentity:
        """The record behind a token, to change (e.g. `.active = False`) mid-test."""
        with self._lock:
            return self._tokens[token]

    def fail_next(self, status: int, times: int = 1, path: str | None = None) -> None:
        """Answer the next `times` calls (to `path` only, if given) with this HTTP status."""
        with self._lock:
            self._failures.extend([(status, path)] * times)

    @property
    def introspections(self) -> int:
        with self._lock:
            return self.calls["POST /v2/oauth2/token/introspect"]

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()

    # --- answers, called by the handler with the lock free --------------------------------
    def _answer(
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
            access = self.add_token(who.username, identity_id=who.identity_id, groups=who.groups)
            return 200, {
                "access_token": access,
                "refresh_token": form["refresh_token"],
                "expires_in": 3600,
                "resource_server": "auth.globus.org",
                "scope": who.scope,
                "token_type": "Bearer",
                "other_tokens": [],
            }
        return 400, {"error": "unsupported_grant_type"}

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


class _Handler(BaseHTTPRequestHandler):
    owner: FakeGlobusAuth
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive stalls ~40 ms a call

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        form = {k: v[-1] for k, v in parse_qs(raw).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, body = self.owner._answer(method, urlsplit(self.path).path, headers, form)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read their own logs
