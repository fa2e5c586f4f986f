"""Who is calling, and the 401 a request gets when it cannot say."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from inference_bundle.router.errors import APIError


@dataclass(frozen=True)
class Caller:
    """An authenticated user. Never holds the token or key that proved it."""

    user: str  # Globus username, or the API key's user name
    identity_id: str | None
    groups: frozenset[str]  # group names as the catalog uses them
    # May see what every user did (the usage view): the key says so, or `auth.admins`.
    admin: bool = False


class Authenticator(Protocol):
    def authenticate(self, authorization: str | None) -> Caller:
        """Check the raw Authorization header; APIError(401) when it proves nobody.

        May block (a call to Globus Auth): the router calls it from a thread.
        """
        ...

    def authenticate_at_once(self, authorization: str | None) -> Caller | None:
        """The same answer when it needs no network call (a known key, a cached token);
        None when only ``authenticate`` can tell. Called on the event loop: a thread hop
        per request costs the router a third of its throughput."""
        ...


class AuthConfigError(Exception):
    """The router's auth settings cannot work; the message names the field and the fix."""


def digest(secret: str) -> str:
    """The hex sha256 of a token or key: what we store, cache and compare, never the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def admin_names(users: Iterable[str]) -> frozenset[str]:
    """`auth.admins` as callers are checked against it: ``user.casefold() in admin_names(...)``.

    Case is ignored, as Globus does for usernames (jdoe@ANL.gov is jdoe@anl.gov).
    """
    return frozenset(user.strip().casefold() for user in users)


def unauthorized(message: str, *, code: str, invalid: bool) -> APIError:
    """A 401 in OpenAI's shape with the RFC 6750 challenge header."""
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    return APIError(
        401,
        message,
        type="invalid_request_error",
        code=code,
        headers={"WWW-Authenticate": challenge},
    )


def bearer_credential(authorization: str | None, how_to_get_one: str) -> str:
    """The credential in `Authorization: Bearer <credential>`, or a 401 that says what to send."""
    if authorization is None or not authorization.strip():
        raise unauthorized(
            f"No credentials were sent. Add the header `Authorization: Bearer <token>`; "
            f"{how_to_get_one}",
            code="missing_credentials",
            invalid=False,
        )
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or len(credential.split()) != 1:
        # Never echo the header: it may be a token sent the wrong way.
        raise unauthorized(
            "The Authorization header is not of the form `Bearer <token>`. Send exactly "
            f"`Authorization: Bearer <token>`; {how_to_get_one}",
            code="malformed_credentials",
            invalid=False,
        )
    return credential
