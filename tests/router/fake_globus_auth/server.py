"""The fake Globus Auth on 127.0.0.1: its life cycle, what a test registers, the HTTP handler."""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from .service import FakeIdentity, GlobusAuthService, PendingCode


class _EnvSetter(Protocol):
    def setenv(self, name: str, value: str) -> None: ...


class FakeGlobusAuth(GlobusAuthService):
    """Start it, register tokens, point globus_sdk at `url`, count what was asked, stop it."""

    def __init__(self, client_id: str = "router-client-id", client_secret: str = "s3cret") -> None:
        super().__init__(client_id, client_secret)
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

    def approve(self, authorize_url: str, username: str, *, identity_id: str | None = None) -> str:
        """Play the browser: `username` logs in at the app's authorize URL; return the code.

        The code is bound to the URL's client, PKCE challenge, redirect URI and scopes, as
        Globus Auth binds it; the same username keeps one identity id across logins.
        """
        query = {k: v[-1] for k, v in parse_qs(urlsplit(authorize_url).query).items()}
        if query.get("code_challenge_method") != "S256" or "code_challenge" not in query:
            raise ValueError(f"not a native-app (PKCE) authorize URL: {authorize_url}")
        code = "CODE-" + secrets.token_urlsafe(16)
        with self._lock:
            if identity_id is not None:
                self._identity_ids[username] = identity_id
            who_id = self._identity_ids.setdefault(username, str(uuid.uuid4()))
            self._codes[code] = PendingCode(
                client_id=query["client_id"],
                challenge=query["code_challenge"],
                redirect_uri=query["redirect_uri"],
                scopes=tuple(query.get("scope", "").split()),
                username=username,
                identity_id=who_id,
            )
        return code

    def expire_refresh_token(self, token: str) -> None:
        """Make a refresh token unusable, as Globus Auth does after a long disuse or a policy."""
        with self._lock:
            self._refresh.pop(token, None)

    def is_active(self, token: str) -> bool:
        """Whether an access token is active or a refresh token still refreshes."""
        with self._lock:
            if token in self._refresh:
                return True
            who = self._tokens.get(token)
            return who is not None and who.active

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
        status, body = self.owner.answer(method, urlsplit(self.path).path, headers, form)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read their own logs
