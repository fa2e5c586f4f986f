"""Load rendered endpoint directories with globus-compute-endpoint's own loader."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

from globus_compute_endpoint.endpoint.config.utils import (
    load_config_yaml,
    load_user_config_schema,
    load_user_config_template,
    render_config_user_template,
)
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

from inference_bundle.rendering.render import RenderedEndpoint


def load_endpoint_dir(folder: Path, user_opts: dict[str, Any] | None = None) -> Any:
    """Load one endpoint directory as the endpoint would for a user; returns its config.

    The endpoint-level ``config.yaml`` loads first, then the user config template is
    validated against the schema, rendered and loaded into a real engine and provider.
    The caller owns the returned config's engine (it is built, not started).
    """
    parent = load_config_yaml((folder / "config.yaml").read_text())
    template_path = folder / "user_config_template.yaml.j2"
    identity = MappedPosixIdentity(
        local_user_record=pwd.getpwuid(os.getuid()),
        globus_identity_candidates=[],
        matched_identity=None,
    )
    text = render_config_user_template(
        parent_config=parent,
        user_config_template=load_user_config_template(template_path),
        user_config_template_path=template_path,
        mapped_identity=identity,
        user_config_schema=load_user_config_schema(folder / "user_config_schema.json"),
        user_opts=user_opts or {},
    )
    return load_config_yaml(text)


def load_rendered(endpoint: RenderedEndpoint, scratch: Path, **kwargs: Any) -> Any:
    """Write one in-memory endpoint to ``scratch`` and load it like a directory."""
    folder = scratch / endpoint.name
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in endpoint.files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return load_endpoint_dir(folder, **kwargs)
