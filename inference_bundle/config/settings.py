"""Router settings (config/router/<deployment>.yaml): what it serves, how, and for whom."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from inference_bundle.config.naming import IDLE_MARGIN_S
from inference_bundle.config.problems import SettingsError, display_path, problems_from_validation
from inference_bundle.config.queue_settings import QueueSettings
from inference_bundle.config.replica_settings import ReplicaSettings
from inference_bundle.config.tracing_settings import TracingSettings
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


class _AuthSettings(_Settings):
    """Who may call the router; ``mode`` says how a caller proves who they are."""

    mode: Literal["keys", "globus"]
    policy: dict[str, ClusterPolicy] = Field(default_factory=dict, description="per cluster")
    admins: list[str] = Field(
        default_factory=list,
        description="user names (an API key's user, a Globus username such as jdoe@anl.gov; "
        "case ignored) who get the admin view, in either mode",
    )


class KeysAuthSettings(_AuthSettings):
    """API keys stored hashed in a file that `make deploy` writes."""

    mode: Literal["keys"]
    # Optional here: the router names this field when it starts without one, and a local
    # deploy falls back to .state/router/api-keys.json.
    keys_file: str | None = Field(default=None, description="hashed API keys")


class GlobusModeAuthSettings(_AuthSettings):
    """Globus Auth bearer tokens, introspected by the router's confidential client."""

    mode: Literal["globus"]
    globus: GlobusAuthSettings


# The mode picks the section's shape: pydantic names a missing globus section or a
# keys_file given to mode globus.
AuthSettings = Annotated[KeysAuthSettings | GlobusModeAuthSettings, Field(discriminator="mode")]


class ListenSettings(_Settings):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    tls_cert: str | None = Field(
        default=None, description="PEM certificate chain: serve https (relative to the root)"
    )
    tls_key: str | None = Field(default=None, description="PEM private key of tls_cert")

    @model_validator(mode="after")
    def _tls_pair(self) -> ListenSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return self

    def base_url(self) -> str:
        """This router's own base URL as a process on its host reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"


class BatchSettings(_Settings):
    """Batches: where their records live, how hard each job feeds its server."""

    db: str | None = Field(
        default=None,
        description="the router's SQLite file (every record: batches, files, usage, limits) "
        "unless store.url names a database; relative to state_dir; default batches.db",
    )
    concurrency: int = Field(default=64, ge=1, le=1024, description="requests in flight a job")
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, description="an upload")
    max_files_per_user: int = Field(
        default=100, ge=1, description="uploads (POST /v1/files) one user may keep"
    )
    max_bytes_per_user: int = Field(
        default=10 * 1024**3, ge=1024, description="bytes of uploads one user may keep"
    )
    upload_check_s: float = Field(
        default=120, gt=0, description="how long checking an upload's lines may take"
    )
    max_input_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description="a guide batch's input_file (copied into the batch's folder at submit)",
    )
    io_timeout_s: float = Field(
        default=120,
        gt=0,
        description="how long a batch request's file work may take (then a 504)",
    )
    prestart_engines: bool = Field(
        default=True,
        description="engine executor: start each batch model's engine (no job) with the router",
    )


class DataPlaneSettings(_Settings):
    """Where model servers dial this router, and how their connections are used."""

    enabled: bool = Field(
        default=True,
        description="warm requests and streams ride the connections nodes dial; false: "
        "every request is a task",
    )
    dial_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+/?$",
        description="the router's base URL as compute nodes reach it (a site's gateway "
        "address); default: the listen address (127.0.0.1 for 0.0.0.0), https with "
        "listen.tls_cert",
    )
    ca_file: str | None = Field(
        default=None,
        description="on the nodes: the CA file that signed the router's certificate (for a "
        "self-signed one); default: the system's CAs",
    )
    # Under the margin that rendered endpoints keep their job past the model's idle timeout,
    # so that the job never ends before the server's own idle teardown.
    refresh_s: float = Field(
        default=30,
        gt=0,
        lt=IDLE_MARGIN_S,
        description="while a model is used over its connections, a task this often keeps "
        "its endpoint's engine (and scheduler job) from idling out",
    )
    connect_wait_s: float = Field(
        default=15,
        gt=0,
        description="how long a stream waits for a just-started server to dial in before "
        "its answer goes through the task, whole",
    )
    credential_ttl_s: float = Field(
        default=3600,
        gt=0,
        description="how long a credential minted for a task may wait for its server's first dial",
    )
    redial_grace_s: float = Field(
        default=600,
        gt=0,
        description="how long a server whose connection dropped may dial again with its credential",
    )
    max_answer_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="an answer read whole from a connection (not a stream) larger than this "
        "fails that request alone with a 502 that names this setting",
    )
    stream_window_bytes: int = Field(
        default=256 * 1024,
        ge=64 * 1024,
        le=16 * 1024 * 1024,
        description="the answer bytes one request may have buffered in the router before its "
        "server waits for its client: a slow client slows its own stream only",
    )


class LimitValues(_Settings):
    """Limits on one counter (a user's, a group's or a model's); unset: no limit."""

    requests_per_second: int | None = Field(default=None, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    concurrent: int | None = Field(default=None, ge=1, description="requests in flight at once")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="prompt and completion tokens in any 60 s"
    )
    tokens_per_day: int | None = Field(
        default=None, ge=0, description="a budget: tokens a UTC day (0: none left to spend)"
    )
    tokens_per_month: int | None = Field(
        default=None, ge=0, description="a budget: tokens a UTC calendar month (an allocation)"
    )

    def over(self, other: LimitValues) -> LimitValues:
        """These values, with ``other``'s where ``other`` sets one (an override)."""
        return self.model_copy(update=other.model_dump(exclude_none=True))

    def any(self) -> bool:
        return any(value is not None for value in self.model_dump().values())


class ClusterLimits(_Settings):
    """One cluster's limits: the counters every user, group and model gets, and overrides."""

    user: LimitValues = Field(default_factory=LimitValues, description="each user's own")
    group: LimitValues = Field(
        default_factory=LimitValues, description="each group's: all its members together"
    )
    model: LimitValues = Field(
        default_factory=LimitValues, description="each model's: all its users together"
    )
    users: dict[str, LimitValues] = Field(
        default_factory=dict, description="per user name (all of that user's keys): overrides"
    )
    groups: dict[str, LimitValues] = Field(default_factory=dict, description="per group name")
    models: dict[str, LimitValues] = Field(
        default_factory=dict, description="per model name (as users ask for it)"
    )


class LimitsSettings(_Settings):
    """Bounds on what one request may ask of a model, and fair sharing between users.

    With no ``clusters`` section nothing is limited (usage is still recorded): the
    embedded local cluster needs no config. A request's cost is reserved before it is
    sent (its prompt estimated from the body, plus ``max_tokens`` or
    ``default_max_tokens``) and settled with the tokens the backend reports.
    """

    max_n: int = Field(default=8, ge=1, le=128, description="most choices (n) a request may ask")
    default_max_tokens: int = Field(
        default=1024,
        ge=1,
        description="completion tokens reserved for a request that names no max_tokens",
    )
    prompt_bytes_per_token: float = Field(
        default=2.0,
        gt=0,
        description="how a prompt's size is turned into tokens before the backend counts "
        "them (lower: a larger, safer reservation)",
    )
    clusters: dict[str, ClusterLimits] = Field(
        default_factory=dict, description="per cluster this router serves"
    )


class MetricsSettings(_Settings):
    """Who may read GET /metrics: it names every model, private ones included."""

    access: Literal["key", "public", "off"] = Field(
        default="key",
        description="key: a bearer token from token_file; public: anyone who reaches the "
        "router; off: no /metrics",
    )
    token_file: str = Field(
        default="metrics-token",
        description="access key: the token's file, relative to state_dir; created (0600) "
        "with a random token when missing",
    )


class StoreSettings(_Settings):
    """Where the router keeps its records: batches, files, usage and limit counters."""

    url: str | None = Field(
        default=None,
        pattern=r"^postgres(ql)?://",
        description="a PostgreSQL database several routers share (postgresql://user@host/db; "
        "the password from ~/.pgpass or PGPASSWORD, never here); default: the SQLite file "
        "batches.db names",
    )
    pool_size: int = Field(default=8, ge=1, le=100, description="PostgreSQL connections")
    connect_timeout_s: float = Field(
        default=3, gt=0, description="how long a request waits for the database (then a 503)"
    )
    keep_days: int = Field(
        default=400,
        ge=1,
        description="how long per-request usage records are kept (daily totals are kept for good)",
    )


class _RouterSettings(_Settings):
    """One router deployment."""

    clusters: list[str] = Field(min_length=1)
    executor: Literal["engine", "globus"]
    listen: ListenSettings = ListenSettings()
    # Under the openai SDK's 600 s default timeout, so the user gets our 503, not a timeout.
    wait_s: float = Field(default=540, gt=0, description="how long a request waits for a start")
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    state_dir: str = Field(default=".state/router", description="logs, run dirs, records")
    log_prompts: bool = False
    # Unless a group is named, the router's log and records are its account's only.
    file_group: str | None = Field(default=None, description="may read the log and records")
    # Off where the nodes' DNS sees names the router's does not (a split horizon).
    check_media_hosts: bool = Field(default=True, description="400 for an unresolvable host")
    auth: AuthSettings
    batches: BatchSettings = BatchSettings()
    limits: LimitsSettings = LimitsSettings()
    store: StoreSettings = StoreSettings()
    metrics: MetricsSettings = MetricsSettings()
    data_plane: DataPlaneSettings = DataPlaneSettings()
    replicas: ReplicaSettings = ReplicaSettings()
    tracing: TracingSettings = TracingSettings()
    queue: QueueSettings = QueueSettings()

    def dial_url(self) -> str:
        """Where nodes dial this router."""
        return (self.data_plane.dial_url or self.listen.base_url()).rstrip("/")


class EngineRouterSettings(_RouterSettings):
    """A router that runs each endpoint's engine in-process, beside the scheduler (no cloud)."""

    executor: Literal["engine"]


class GlobusRouterSettings(_RouterSettings):
    """A router that reaches each endpoint through the Globus Compute cloud."""

    executor: Literal["globus"]


# The executor picks the settings' shape.
RouterSettings = Annotated[
    EngineRouterSettings | GlobusRouterSettings, Field(discriminator="executor")
]
_ROUTER_SETTINGS: TypeAdapter[RouterSettings] = TypeAdapter(RouterSettings)


def parse_settings(data: Mapping[str, Any]) -> RouterSettings:
    """Validate router settings given as data; raises pydantic's ValidationError."""
    return _ROUTER_SETTINGS.validate_python(data)


def load_settings(path: Path, root: Path) -> RouterSettings:
    """Load and validate router settings; problems name the file and the field."""
    shown = display_path(path, root)
    try:
        return parse_settings(load_mapping(path, shown, SettingsError))
    except ValidationError as err:
        raise SettingsError(problems_from_validation(err, shown, RouterSettings)) from None
