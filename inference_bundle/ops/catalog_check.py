"""`make check`: validate every cluster's catalog and load every rendered endpoint.

Loading goes through globus-compute-endpoint's own loader, in a scratch folder: nothing
under the checkout is written.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from inference_bundle.config.catalog import Catalog, load_all
from inference_bundle.rendering.render import render_catalog
from inference_bundle.rendering.verify import load_rendered

Say = Callable[[str], None]


class EndpointLoadError(RuntimeError):
    """A rendered endpoint that the endpoint's loader rejects; the message names it."""


def check_catalogs(root: Path, say: Say) -> None:
    """Validate every catalog (ConfigError) and load each rendered endpoint, saying progress."""
    catalogs = load_all(root)
    with tempfile.TemporaryDirectory(prefix="bundle-check-") as scratch:
        for catalog in catalogs:
            _check_loads(catalog, root, Path(scratch), say)
    total = sum(len(c.entries) for c in catalogs)
    say(f"catalog OK: {len(catalogs)} clusters, {total} endpoint files")


def _check_loads(catalog: Catalog, root: Path, scratch: Path, say: Say) -> None:
    interface = catalog.profile.network_interface
    if interface and interface not in {name for _, name in socket.if_nameindex()}:
        # Parsl resolves the interface while loading; this host is not on that network.
        say(f"{catalog.cluster}: interface {interface} is not on this host; loaded without it")
        profile = catalog.profile.model_copy(update={"network_interface": None})
        catalog = replace(catalog, profile=profile)
    rendered = render_catalog(catalog, root / "templates")
    for endpoint in rendered:
        try:
            config = load_rendered(endpoint, scratch / catalog.cluster)
        except Exception as err:  # the loader raises click, jinja2, jsonschema and YAML errors
            raise EndpointLoadError(
                f"{catalog.cluster}/{endpoint.name}: does not load: {err}"
            ) from None
        config.engine.shutdown()
    say(f"{catalog.cluster}: {len(rendered)} endpoint configs load")
