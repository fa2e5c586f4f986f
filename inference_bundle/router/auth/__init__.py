"""Who is calling (401) and whether they may use a cluster and endpoint (403).

Two modes, chosen by `auth.mode` in the router settings: `globus` introspects Globus Auth
bearer tokens; `keys` checks API keys stored hashed in a file that `make deploy` writes.
Tokens and keys never reach a log line or an error message.
"""

from __future__ import annotations

import os
from pathlib import Path

from inference_bundle.config.settings import AuthSettings, KeysAuthSettings
from inference_bundle.router.auth.callers import AuthConfigError, Authenticator, Caller
from inference_bundle.router.auth.globus import GlobusAuthenticator
from inference_bundle.router.auth.keys import (
    ApiKeyEntry,
    KeysAuthenticator,
    NewApiKey,
    UnknownKeyError,
    add_api_key,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from inference_bundle.router.auth.policy import allowed_routes, check_access, may_use

__all__ = [
    "ApiKeyEntry",
    "AuthConfigError",
    "Authenticator",
    "Caller",
    "GlobusAuthenticator",
    "KeysAuthenticator",
    "NewApiKey",
    "UnknownKeyError",
    "add_api_key",
    "allowed_routes",
    "build_authenticator",
    "check_access",
    "create_api_key",
    "keys_file_path",
    "list_api_keys",
    "may_use",
    "revoke_api_key",
]


def keys_file_path(settings: KeysAuthSettings, root: Path) -> Path:
    """Where mode keys keeps its keys: `auth.keys_file`, a relative one taken from `root`."""
    if not settings.keys_file:
        raise AuthConfigError(
            "auth.keys_file: mode keys needs the path of the API keys file "
            "(e.g. .state/router/api-keys.json)"
        )
    keys_file = Path(settings.keys_file)
    return keys_file if keys_file.is_absolute() else root / keys_file


def build_authenticator(settings: AuthSettings, root: Path) -> Authenticator:
    """The authenticator for `settings.mode`; a relative keys_file is taken from `root`.

    Raises AuthConfigError, naming the settings field, when the mode cannot work.
    """
    if settings.mode == "keys":
        return KeysAuthenticator(keys_file_path(settings, root), settings.admins)
    if settings.globus is None:
        raise AuthConfigError(
            "auth.globus: mode globus needs a globus section with the router's client_id"
        )
    variable = settings.globus.client_secret_env
    secret = os.environ.get(variable, "")
    if not secret:
        raise AuthConfigError(
            f"auth.globus.client_secret_env: the environment variable {variable} is not set; "
            "export the router's Globus client secret in it before starting the router"
        )
    return GlobusAuthenticator(settings.globus, secret, admins=settings.admins)
