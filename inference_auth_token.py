#!/usr/bin/env python3
"""The bearer token for the inference API: log in with Globus once, then get a valid token.

    python inference_auth_token.py authenticate [--force]     # Globus login, tokens stored
    python inference_auth_token.py get_access_token           # prints a valid token
    python inference_auth_token.py get_time_until_token_expiration [--units hours]
    python inference_auth_token.py logout                     # revoke and delete the tokens

    from inference_auth_token import get_access_token         # the same, from Python

`get_access_token` refreshes an expired access token with the stored refresh token, without
a login. Which deployment the token is for: `--cluster NAME` or INFERENCE_AUTH_CLUSTER, else
the `default` of config/auth/token_helper.yaml beside this file (INFERENCE_AUTH_CONFIG names
another). A copy with no such file (the guide has users download this one file) uses its
built-in copy of the production entry, `sophia`. A cluster of kind `api_key` (the local
deployment of `make deploy`) has no login: its token is the API key `make deploy` wrote.

Tokens are kept in ~/.globus/app/<client id>/inference_app/tokens.json (INFERENCE_AUTH_TOKENS
names another file), owner-only, in globus_sdk's JSON token-storage format: the path and
format of ALCF's own helper, with the username and login time added to each entry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import globus_sdk
from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

HERE = Path(__file__).resolve().parent
CONFIG_FILE = HERE / "config" / "auth" / "token_helper.yaml"
COMMAND = "python inference_auth_token.py"  # how messages name this helper
LOGOUT_URL = "https://app.globus.org/logout"
APP_NAME = "inference_app"
AUTH_SERVER = "auth.globus.org"
OIDC_SCOPES = ("openid", "profile", "email")  # for the identity the tokens belong to
REFRESH_MARGIN_S = 60  # refresh a token this close to its expiry: it must outlive the request

# The `sophia` entry of config/auth/token_helper.yaml, for a copy without that file.
BUILT_IN_CONFIG: dict[str, Any] = {
    "default": "sophia",
    "clusters": {
        "sophia": {
            "kind": "globus",
            "client_id": "58fdd3bc-e1c3-4ce5-80ea-8d6b87cfb944",
            "resource_server": "681c10cc-f684-4540-bcd7-0b4df3bc26ef",
            "scope": "https://auth.globus.org/scopes/681c10cc-f684-4540-bcd7-0b4df3bc26ef/action_all",
            "reauthenticate_after_days": 7,
        }
    },
}


class TokenHelperError(Exception):
    """A problem the user can fix; the message says how. The command prints it, no traceback."""


class NotAuthenticated(TokenHelperError):
    """No stored tokens: the user has to run `authenticate`."""


class ReauthenticationRequired(TokenHelperError):
    """The stored login no longer yields tokens: a new login (`authenticate --force`) does."""


class IdentityMismatch(TokenHelperError):
    """A login as someone other than the identity whose tokens are stored."""


@dataclass(frozen=True)
class GlobusCluster:
    """A deployment whose API takes Globus tokens for `resource_server`."""

    name: str
    client_id: str  # the native app users log in through
    resource_server: str  # the gateway's Globus client, the audience of its tokens
    scope: str
    reauthenticate_after_days: float  # the service's login policy; 0: none


@dataclass(frozen=True)
class ApiKeyCluster:
    """A deployment whose API takes the API key that `make deploy` wrote."""

    name: str
    api_key_file: Path


Cluster = GlobusCluster | ApiKeyCluster


# --- the public API -----------------------------------------------------------------------
def get_access_token(cluster: str | None = None) -> str:
    """A bearer token for the API, refreshed without a login if it has expired."""
    target = load_cluster(cluster)
    if isinstance(target, ApiKeyCluster):
        return _read_api_key(target)
    path = token_file(target)
    return _valid_tokens(target, path, _load_tokens(path)).access_token


def get_time_until_token_expiration(cluster: str | None = None) -> float | None:
    """Seconds the stored access token has left (negative: expired); None: an API key."""
    target = load_cluster(cluster)
    if isinstance(target, ApiKeyCluster):
        _read_api_key(target)
        return None
    path = token_file(target)
    data = _stored_for(target, path, _load_tokens(path))
    return data.expires_at_seconds - time.time()


def authenticate(
    *,
    force: bool = False,
    cluster: str | None = None,
    ask_code: Callable[[str], str] | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Log in with Globus and store the tokens, unless the stored ones still work.

    `force` logs in even then and replaces the stored tokens, whoever they belong to: the
    way to change accounts. Without it, a login as another identity than the stored one is
    refused, so that one file never mixes two people's tokens. `ask_code` shows the
    authorize URL and returns the code Globus Auth displays after the login (default: the
    terminal).
    """
    target = load_cluster(cluster)
    if isinstance(target, ApiKeyCluster):
        _read_api_key(target)
        say(
            f"The {target.name} deployment takes the API key that `make deploy` wrote to "
            f"{target.api_key_file}: there is nothing to log in to. "
            "`get_access_token` prints the key."
        )
        return
    path = token_file(target)
    stored = _load_tokens(path)
    if not force and target.resource_server in stored:
        try:
            current = _valid_tokens(target, path, stored)
        except ReauthenticationRequired:
            say(
                "The stored login no longer yields tokens; logging in again (if Globus logs "
                f"you in without asking, visit {LOGOUT_URL} first)."
            )
        else:
            say(
                f"Already logged in as {_username(current)}; tokens in {path}. "
                f"To log in again (another account, or after 'Permission denied from internal "
                f"policies'), visit {LOGOUT_URL}, then run `{COMMAND} authenticate --force`."
            )
            return
    tokens = _login(target, ask_code or _ask_code_on_terminal)
    new = tokens[target.resource_server]
    old = stored.get(target.resource_server)
    if not force and old is not None and old.identity_id not in (None, new.identity_id):
        _revoke(target, tokens)  # unused: leave nothing valid behind
        raise IdentityMismatch(_mismatch_message(path, old, new))
    if force and stored:
        _revoke(target, stored)  # best effort: a new login replaces them anyway
    _save_tokens(path, tokens, replace=True)
    say(f"Logged in as {_username(new)}. Tokens stored in {path} (readable by you only).")


def logout(cluster: str | None = None, say: Callable[[str], None] = print) -> None:
    """Revoke the stored tokens with Globus Auth and delete the file that held them."""
    target = load_cluster(cluster)
    if isinstance(target, ApiKeyCluster):
        say(
            f"The {target.name} deployment takes an API key ({target.api_key_file}), which "
            "`make deploy` manages: there is nothing to log out of."
        )
        return
    path = token_file(target)
    stored = _load_tokens(path)
    if not stored:
        say(f"No stored tokens in {path}: nothing to log out of.")
        return
    failures = _revoke(target, stored)
    path.unlink()
    who = _username(next(iter(stored.values())))
    if failures:
        raise TokenHelperError(
            f"Deleted {path}, but Globus Auth did not revoke every token of {who} "
            f"({'; '.join(failures)}). They stay valid until they expire unless you remove "
            "the app's consent at app.globus.org (Settings, Consents)."
        )
    say(
        f"Revoked the tokens of {who} and deleted {path}. "
        f"To end your Globus session in the browser too, visit {LOGOUT_URL}."
    )


# --- which deployment -----------------------------------------------------------------------
def load_cluster(name: str | None = None) -> Cluster:
    """The deployment named by `name`, INFERENCE_AUTH_CLUSTER or the config's default."""
    config, source = _read_config()
    clusters = config.get("clusters")
    if not isinstance(clusters, dict) or not clusters:
        raise TokenHelperError(f"{source}: `clusters` must map cluster names to their settings")
    chosen = name or os.environ.get("INFERENCE_AUTH_CLUSTER") or config.get("default")
    if chosen not in clusters:
        raise TokenHelperError(
            f"{source}: no cluster {chosen!r} (from --cluster, INFERENCE_AUTH_CLUSTER or "
            f"`default`); known: {', '.join(sorted(clusters))}"
        )
    return _parse_cluster(str(chosen), clusters[chosen], source)


def _read_config() -> tuple[dict[str, Any], str]:
    """The config file's data and how to name it; the built-in entry if there is no file."""
    named = os.environ.get("INFERENCE_AUTH_CONFIG")
    path = Path(named).expanduser() if named else CONFIG_FILE
    if not named and not path.exists():
        return BUILT_IN_CONFIG, f"the built-in settings (no {CONFIG_FILE})"
    try:
        import yaml
    except ImportError:
        raise TokenHelperError(
            f"reading {path} needs PyYAML: `pip install pyyaml`, or use the bundle's "
            ".venv/bin/python"
        ) from None
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise TokenHelperError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise TokenHelperError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TokenHelperError(f"{path}: expected a mapping with `default` and `clusters`")
    return data, str(path)


def _parse_cluster(name: str, entry: Any, source: str) -> Cluster:
    """One `clusters.<name>` entry, checked: a wrong field is named with its fix."""

    def field(key: str) -> str:
        value = entry.get(key)
        if not isinstance(value, str) or not value:
            raise TokenHelperError(f"{source}: clusters.{name}.{key}: missing; it is a string")
        return value

    if not isinstance(entry, dict):
        raise TokenHelperError(f"{source}: clusters.{name}: expected a mapping")
    kind = entry.get("kind")
    if kind == "api_key":
        key_file = Path(field("api_key_file")).expanduser()
        return ApiKeyCluster(name, key_file if key_file.is_absolute() else HERE / key_file)
    if kind == "globus":
        days = entry.get("reauthenticate_after_days", 0)
        if not isinstance(days, int | float) or days < 0:
            raise TokenHelperError(
                f"{source}: clusters.{name}.reauthenticate_after_days: a number of days ≥ 0"
            )
        return GlobusCluster(
            name, field("client_id"), field("resource_server"), field("scope"), float(days)
        )
    raise TokenHelperError(f"{source}: clusters.{name}.kind: {kind!r}; use globus or api_key")


def _read_api_key(target: ApiKeyCluster) -> str:
    try:
        key = target.api_key_file.read_text().strip()
    except FileNotFoundError:
        key = ""
    except OSError as err:
        raise TokenHelperError(f"cannot read {target.api_key_file}: {err.strerror}") from None
    if not key:
        raise TokenHelperError(
            f"No API key at {target.api_key_file}: `make deploy CLUSTER={target.name}` "
            "writes it when it deploys that cluster; run it first."
        )
    return key


# --- stored tokens ----------------------------------------------------------------------------
def token_file(target: GlobusCluster) -> Path:
    """Where the tokens live: INFERENCE_AUTH_TOKENS, else where globus_sdk's UserApp keeps them."""
    named = os.environ.get("INFERENCE_AUTH_TOKENS")
    if named:
        return Path(named).expanduser()
    return Path.home() / ".globus" / "app" / target.client_id / APP_NAME / "tokens.json"


def _load_tokens(path: Path) -> dict[str, TokenStorageData]:
    if not path.exists():
        return {}
    try:
        return JSONTokenStorage(path).get_token_data_by_resource_server()
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ReauthenticationRequired(
            f"{path} cannot be read as stored tokens ({type(err).__name__}); "
            f"run `{COMMAND} authenticate --force` to replace it"
        ) from None


def _save_tokens(path: Path, tokens: Mapping[str, TokenStorageData], *, replace: bool) -> None:
    """Store token data in globus_sdk's JSON format, owner-only, replacing the file at once.

    Written here rather than by JSONTokenStorage, which drops each entry's `extra` (the
    username and login time this helper keeps). A folder this creates is 0700.
    """
    merged = {} if replace else _load_tokens(path)
    merged.update(tokens)
    document = {
        "globus-sdk.version": globus_sdk.__version__,
        "format_version": JSONTokenStorage.format_version,
        "data": {"DEFAULT": {rs: d.to_dict(include_extra=True) for rs, d in merged.items()}},
    }
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        json.dump(document, out)
    scratch.chmod(0o600)  # in case a stale scratch file had other bits
    os.replace(scratch, path)


def _stored_for(
    target: GlobusCluster, path: Path, stored: Mapping[str, TokenStorageData]
) -> TokenStorageData:
    data = stored.get(target.resource_server)
    if data is None:
        raise NotAuthenticated(
            f"No stored tokens for {target.name} in {path}: run `{COMMAND} authenticate` "
            f"first.{_api_key_hint()}"
        )
    return data


def _api_key_hint() -> str:
    """Point a bundle operator who forgot to pick the local deployment at it."""
    try:
        config, _ = _read_config()
        names = [
            name
            for name in config.get("clusters") or {}
            if isinstance(found := load_cluster(name), ApiKeyCluster)
            and found.api_key_file.exists()
        ]
    except TokenHelperError:
        return ""
    if not names:
        return ""
    return f" (For the deployment of `make deploy`, set INFERENCE_AUTH_CLUSTER={names[0]}.)"


def _valid_tokens(
    target: GlobusCluster, path: Path, stored: Mapping[str, TokenStorageData]
) -> TokenStorageData:
    """The stored token data, refreshed and saved first if the access token has expired."""
    data = _stored_for(target, path, stored)
    _check_login_age(target, data)
    if data.expires_at_seconds - REFRESH_MARGIN_S > time.time():
        return data
    if not data.refresh_token:
        raise ReauthenticationRequired(_log_in_again("The stored tokens have no refresh token"))
    client = globus_sdk.NativeAppAuthClient(target.client_id, app_name=APP_NAME)
    with _reaching_globus("refreshing your access token"):
        try:
            answer = client.oauth2_refresh_token(data.refresh_token)
        except globus_sdk.GlobusAPIError as err:
            raise ReauthenticationRequired(
                _log_in_again(
                    f"Globus Auth refused to refresh your access token ({_reason(err)}): the "
                    "refresh token expired, was revoked, or the login is older than the "
                    "service allows"
                )
            ) from None
    fresh = answer.by_resource_server[target.resource_server]
    refreshed = TokenStorageData(
        resource_server=target.resource_server,
        identity_id=data.identity_id,
        scope=fresh["scope"],
        access_token=fresh["access_token"],
        refresh_token=fresh.get("refresh_token") or data.refresh_token,
        expires_at_seconds=fresh["expires_at_seconds"],
        token_type=fresh.get("token_type"),
        extra=data.extra,
    )
    _save_tokens(path, {target.resource_server: refreshed}, replace=False)
    return refreshed


def _check_login_age(target: GlobusCluster, data: TokenStorageData) -> None:
    """Say what the service's "re-authenticate every N days" policy will say, before it does."""
    logged_in = data.extra.get("authenticated_at")
    if not target.reauthenticate_after_days or not isinstance(logged_in, int | float):
        return  # no policy, or a login by another tool that did not record its time
    age_days = (time.time() - logged_in) / 86400
    if age_days > target.reauthenticate_after_days:
        when = datetime.fromtimestamp(logged_in, UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise ReauthenticationRequired(
            _log_in_again(
                f"Your Globus login of {when} is {age_days:.0f} days old, and {target.name} "
                f"asks for a new login every {target.reauthenticate_after_days:g} days (its "
                "'Permission denied from internal policies')"
            )
        )


def _log_in_again(why: str) -> str:
    return (
        f"{why}. Log in again: visit {LOGOUT_URL} to end your Globus session, then run "
        f"`{COMMAND} authenticate --force`."
    )


def _username(data: TokenStorageData) -> str:
    return str(data.extra.get("username") or data.identity_id or "an unknown identity")


def _mismatch_message(path: Path, old: TokenStorageData, new: TokenStorageData) -> str:
    return (
        f"You logged in as {_username(new)}, but {path} holds the tokens of {_username(old)} "
        f"(identity {old.identity_id}); tokens of two identities are not mixed, so nothing "
        f"was stored. To switch to {_username(new)}, run `{COMMAND} authenticate --force` "
        f"(it replaces the stored tokens). To stay {_username(old)}, visit {LOGOUT_URL}, run "
        f"`{COMMAND} authenticate` again and log in as {_username(old)}."
    )


# --- talking to Globus Auth -------------------------------------------------------------------
@contextmanager
def _reaching_globus(doing: str) -> Iterator[None]:
    """Turn "Globus Auth could not be reached" into a sentence instead of a traceback."""
    try:
        yield
    except globus_sdk.NetworkError as err:
        raise TokenHelperError(
            f"Could not reach Globus Auth while {doing} ({type(err).__name__}); check the "
            "network connection and try again."
        ) from None


def _reason(err: globus_sdk.GlobusAPIError) -> str:
    """Status and error code only: Globus Auth's messages may quote what was sent."""
    return f"HTTP {err.http_status}, {err.code}"


def _ask_code_on_terminal(url: str) -> str:
    print(f"Open this URL in a browser and log in with your Globus account:\n\n  {url}\n")
    try:
        return input("Then paste the authorization code shown after the login here: ").strip()
    except EOFError:
        return ""


def _login(target: GlobusCluster, ask_code: Callable[[str], str]) -> dict[str, TokenStorageData]:
    """The native-app login: authorize URL, code from the user, tokens, whose they are."""
    client = globus_sdk.NativeAppAuthClient(target.client_id, app_name=APP_NAME)
    client.oauth2_start_flow(requested_scopes=[*OIDC_SCOPES, target.scope], refresh_tokens=True)
    code = ask_code(client.oauth2_get_authorize_url())
    if not code:
        raise TokenHelperError(
            f"No authorization code was entered; run `{COMMAND} authenticate` again and paste "
            "the code Globus shows after the login."
        )
    with _reaching_globus("exchanging the authorization code"):
        try:
            answer = client.oauth2_exchange_code_for_tokens(code)
        except globus_sdk.GlobusAPIError as err:
            raise TokenHelperError(
                f"Globus Auth refused the authorization code ({_reason(err)}): a code works "
                f"once, for a few minutes; run `{COMMAND} authenticate` again."
            ) from None
        by_server = answer.by_resource_server
        if target.resource_server not in by_server or AUTH_SERVER not in by_server:
            raise TokenHelperError(
                f"Globus Auth issued no token for {target.resource_server}: check "
                f"clusters.{target.name}.scope and resource_server in the config"
            )
        who = _who_logged_in(by_server[AUTH_SERVER]["access_token"])
    now = int(time.time())
    return {
        server: TokenStorageData(
            resource_server=server,
            identity_id=who["sub"],
            scope=data["scope"],
            access_token=data["access_token"],
            refresh_token=data.get("refresh_token"),
            expires_at_seconds=data["expires_at_seconds"],
            token_type=data.get("token_type"),
            extra={"username": who.get("preferred_username"), "authenticated_at": now},
        )
        for server, data in by_server.items()
    }


def _who_logged_in(auth_token: str) -> dict[str, Any]:
    """The identity behind a login (`sub`, `preferred_username`), from OIDC userinfo."""
    client = globus_sdk.AuthClient(authorizer=globus_sdk.AccessTokenAuthorizer(auth_token))
    try:
        return dict(client.userinfo().data)
    except globus_sdk.GlobusAPIError as err:
        raise TokenHelperError(
            f"Globus Auth did not say who logged in ({_reason(err)}); nothing was stored. "
            f"Run `{COMMAND} authenticate` again."
        ) from None


def _revoke(target: GlobusCluster, tokens: Mapping[str, TokenStorageData]) -> list[str]:
    """Revoke every access and refresh token; returns what failed, as reasons."""
    client = globus_sdk.NativeAppAuthClient(target.client_id, app_name=APP_NAME)
    failures = []
    for data in tokens.values():
        for token in filter(None, (data.access_token, data.refresh_token)):
            try:
                client.oauth2_revoke_token(token)
            except globus_sdk.GlobusAPIError as err:
                failures.append(f"{data.resource_server}: {_reason(err)}")
            except globus_sdk.NetworkError as err:
                failures.append(f"{data.resource_server}: {type(err).__name__}")
    return failures


# --- the command --------------------------------------------------------------------------------
def _format_duration(seconds: float) -> str:
    minutes = int(abs(seconds)) // 60
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _print_time_left(args: argparse.Namespace) -> None:
    left = get_time_until_token_expiration(args.cluster)
    if left is None:
        print("This deployment takes an API key, which does not expire.")
    elif args.units:
        print(round(left / {"seconds": 1, "minutes": 60, "hours": 3600}[args.units], 2))
    elif left > 0:
        print(f"The access token expires in {_format_duration(left)}.")
    else:
        print(
            f"The access token expired {_format_duration(left)} ago; `get_access_token` "
            "refreshes it without a login."
        )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cluster",
        help="the deployment (a name in config/auth/token_helper.yaml); "
        "default: INFERENCE_AUTH_CLUSTER, else the config's default",
    )
    parser = argparse.ArgumentParser(
        prog="inference_auth_token.py",
        description="Bearer tokens for the inference API (Globus login, or the local API key).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    login = commands.add_parser(
        "authenticate", parents=[common], help="log in with Globus and store the tokens"
    )
    login.add_argument(
        "--force", action="store_true", help=f"log in again (visit {LOGOUT_URL} first)"
    )
    commands.add_parser(
        "get_access_token", parents=[common], help="print a valid access token (refreshed)"
    )
    left = commands.add_parser(
        "get_time_until_token_expiration",
        parents=[common],
        help="how long the stored access token stays valid",
    )
    left.add_argument(
        "--units", choices=["seconds", "minutes", "hours"], help="print only a number, in these"
    )
    commands.add_parser("logout", parents=[common], help="revoke and delete the stored tokens")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; user errors become one line on stderr and exit status 1."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "authenticate":
            authenticate(force=args.force, cluster=args.cluster)
        elif args.command == "get_access_token":
            print(get_access_token(args.cluster))
        elif args.command == "get_time_until_token_expiration":
            _print_time_left(args)
        else:
            logout(args.cluster)
    except TokenHelperError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
