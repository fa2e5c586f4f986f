"""The start step of a site deploy: write the endpoints' files, start what needs it."""

from __future__ import annotations

from inference_bundle.ops.endpoint_control import EndpointCommand, EndpointError, write_files
from inference_bundle.ops.site_plan import EndpointChange, Say, Site
from inference_bundle.rendering.render import RenderedEndpoint


def write_endpoints(
    site: Site, rendered: list[RenderedEndpoint], changes: list[EndpointChange]
) -> None:
    """Write the files that changed into each endpoint's folder."""
    for endpoint, change in zip(rendered, changes, strict=True):
        if change.changed:
            write_files(endpoint, site.endpoints_dir / endpoint.name, list(change.changed))


def start_endpoints(
    command: EndpointCommand, changes: list[EndpointChange], id_wait_s: float, say: Say
) -> list[str]:
    """Start or restart what needs it; the failures, one sentence each."""
    failures = []
    for change in changes:
        action = change.action
        if action is None:
            continue
        why = f" ({', '.join(change.changed)} changed)" if change.changed else " (not running)"
        say(f"{action}ing {change.name}{why}")
        try:
            if action == "restart":
                command.restart(change.name)
            else:
                command.start(change.name)
            command.wait_for_id(change.name, id_wait_s)
        except EndpointError as err:
            failures.append(str(err))
    return failures
