"""Router settings (config/router/<deployment>.yaml): what it serves, how, and for whom."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference_bundle.config.naming import IDLE_MARGIN_S
from inference_bundle.config.problems import CatalogError, display_path, problems_from_validation
from inference_bundle.config.profiles import valid_fields
from inference_bundle.config.yamlfile import load_mapping


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterPolicy(_Settings):
    """Who may use a cluster: anyone matching a domain or a group (both empty: anyone)."""

    identity_domains: list[str] = Field(default_factory=list, examples=[["anl.gov"]])
    groups: list[str] = Field(default_factory=list, description="group names, see auth.groups")


class GlobusAuthSettings(_Settings):
    """Token introspection with Globus Auth, as the router's confidential client."""

    client_id: str
    client_secret_env: str = Field(
        default="GLOBUS_CLIENT_SECRET", description="environment variable holding the secret"
    )
    cache_ttl_s: float = Field(default=300, gt=0, description="how long an introspection holds")
    groups: dict[str, str] = Field(
        default_factory=dict, description="group name used in the catalog -> Globus group id"
    )


class AuthSettings(_Settings):
    mode: Literal["keys", "globus"]
    keys_file: str | None = Field(default=None, description="mode keys: hashed API keys")
    globus: GlobusAuthSettings | None = None
    policy: dict[str, ClusterPolicy] = Field(default_factory=dict, description="per cluster")


class ListenSettings(_Settings):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)


class BatchSettings(_Settings):
    """Batches: where their records live, how hard each job feeds its server."""

    db: str | None = Field(
        default=None, description="SQLite file, relative to state_dir; default batches.db"
    )
    concurrency: int = Field(default=64, ge=1, le=1024, description="requests in flight a job")
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, description="an upload")
    prestart_engines: bool = Field(
        default=True,
        description="engine executor: start each batch model's engine (no job) with the router",
    )


class DirectPathSettings(_Settings):
    """Engine executor: warm requests straight to a model server on the router's host."""

    enabled: bool = True
    # Under the margin that rendered endpoints keep their job past the model's idle timeout,
    # so that the job never ends before the server's own idle teardown.
    refresh_s: float = Field(
        default=30,
        gt=0,
        lt=IDLE_MARGIN_S,
        description="one request this often still goes through the endpoint, so that its "
        "engine keeps the job while the model is used",
    )


class RouterSettings(_Settings):
    """One router deployment."""

    clusters: list[str] = Field(min_length=1)
    executor: Literal["engine", "globus"]
    listen: ListenSettings = ListenSettings()
    # Under the openai SDK's 600 s default timeout, so the user gets our 503, not a timeout.
    wait_s: float = Field(default=540, gt=0, description="how long a request waits for a start")
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    state_dir: str = Field(default=".state/router", description="logs, run dirs, records")
    log_prompts: bool = False
    auth: AuthSettings
    batches: BatchSettings = BatchSettings()
    direct_path: DirectPathSettings = DirectPathSettings()


def load_settings(path: Path, root: Path) -> RouterSettings:
    """Load and validate router settings; problems name the file and the field."""
    shown = display_path(path, root)
    try:
        return RouterSettings.model_validate(load_mapping(path, shown))
    except ValidationError as err:
        raise CatalogError(
            problems_from_validation(err, shown, valid_fields(RouterSettings))
        ) from None
