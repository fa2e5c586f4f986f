"""Who may use what: a cluster's policy (identity domain or group) and an endpoint's groups."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from inference_bundle.config.settings import AuthSettings
from inference_bundle.router.auth.callers import Caller
from inference_bundle.router.errors import APIError

if TYPE_CHECKING:
    from inference_bundle.router.routes import Route


def identity_domain(user: str) -> str | None:
    """The domain of a username such as `jdoe@anl.gov`, lowercased; None without one."""
    _, at, domain = user.rpartition("@")
    return domain.lower() if at and domain else None


def _missing(
    caller: Caller, auth: AuthSettings, cluster: str, endpoint_groups: Sequence[str]
) -> list[str]:
    """What the caller lacks, as sentence fragments; empty when access is allowed."""
    missing = []
    policy = auth.policy.get(cluster)
    if policy is not None and (policy.identity_domains or policy.groups):
        domains = {d.lower() for d in policy.identity_domains}
        in_domain = identity_domain(caller.user) in domains
        in_group = not caller.groups.isdisjoint(policy.groups)
        if not (in_domain or in_group):
            ways = []
            if policy.identity_domains:
                ways.append("an identity from " + _either(policy.identity_domains))
            if policy.groups:
                ways.append("membership in the group " + _either(policy.groups))
            missing.append(
                f"cluster {cluster} requires {' or '.join(ways)}, and {caller.user} has neither"
                if len(ways) > 1
                else f"cluster {cluster} requires {ways[0]}, which {caller.user} lacks"
            )
    if endpoint_groups and caller.groups.isdisjoint(endpoint_groups):
        missing.append(
            f"this model is limited to members of the group {_either(endpoint_groups)}, "
            f"and {caller.user} is not one"
        )
    return missing


def _either(names: Sequence[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def may_use(
    caller: Caller, auth: AuthSettings, cluster: str, endpoint_groups: Sequence[str]
) -> bool:
    """Whether the caller passes the cluster's policy and the endpoint's group list."""
    return not _missing(caller, auth, cluster, endpoint_groups)


def allowed_routes(caller: Caller, auth: AuthSettings) -> Callable[[Route], bool]:
    """Whether the caller may use a route: what hints and listings may name to them."""

    def allowed(route: Route) -> bool:
        return may_use(caller, auth, route.cluster, route.entry.endpoint.groups)

    return allowed


def check_access(
    caller: Caller, auth: AuthSettings, cluster: str, endpoint_groups: Sequence[str]
) -> None:
    """Raise APIError(403) naming each requirement the caller does not meet.

    A cluster with no policy, or an empty one, admits every authenticated caller.
    """
    missing = _missing(caller, auth, cluster, endpoint_groups)
    if missing:
        hint = (
            "Log in with an identity that qualifies "
            "(`python inference_auth_token.py authenticate --force`), "
            "or ask the operators for access."
            if auth.mode == "globus"
            else "Ask the operators for a key that carries the access you need."
        )
        raise APIError(
            403,
            f"Access denied: {'; '.join(missing)}. {hint}",
            type="invalid_request_error",
            code="permission_denied",
        )
