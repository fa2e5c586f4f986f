"""Everything a running router holds: routes, states, executors, auth, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import node_runtime

from inference_bundle.config.catalog import Catalog, load_catalog
from inference_bundle.config.naming import jobs_endpoint_name
from inference_bundle.config.registry import load_registry
from inference_bundle.config.settings import KeysAuthSettings, RouterSettings
from inference_bundle.router.auth import (
    AuthConfigError,
    Authenticator,
    build_authenticator,
    keys_file_path,
)
from inference_bundle.router.batches.runner import BatchRunner, batch_endpoint, engine_batch_factory
from inference_bundle.router.batches.service import BatchService
from inference_bundle.router.batches.store import BatchStore
from inference_bundle.router.dataplane.plane import DataPlane
from inference_bundle.router.dispatch.admission import Admission
from inference_bundle.router.dispatch.dispatcher import Dispatcher
from inference_bundle.router.dispatch.queue_metrics import QueueMetrics
from inference_bundle.router.dispatch.replica_control import ReplicaControl
from inference_bundle.router.dispatch.scheduler_listing import JobListing
from inference_bundle.router.errors import APIError
from inference_bundle.router.executors.globus import (
    GlobusExecutor,
    SharedSubmitter,
    default_sdk_executor,
)
from inference_bundle.router.executors.pool import ExecutorPool, engine_factory, one_replica
from inference_bundle.router.fleet.maintenance import Maintenance
from inference_bundle.router.fleet.placement import Placement
from inference_bundle.router.fleet.replica_metrics import ReplicaMetrics
from inference_bundle.router.fleet.replicas import Replicas
from inference_bundle.router.fleet.states import ModelStatus, StateTracker
from inference_bundle.router.fleet.warm_schedules import WarmKeeper
from inference_bundle.router.host_lookup import HostCheck
from inference_bundle.router.limits.ledger import Ledger
from inference_bundle.router.limits.limiter import Limiter, Ticket
from inference_bundle.router.limits.reload import check_limits
from inference_bundle.router.metrics import (
    CallerTokens,
    ConnectionsCollector,
    Metrics,
    metrics_token,
)
from inference_bundle.router.minute_series import MinuteSeries
from inference_bundle.router.routes import Route, RouteTable
from inference_bundle.router.store import Database, open_database
from inference_bundle.router.store.private_files import (
    file_access,
    made_secret,
    tighten,
    tighten_folder,
)
from inference_bundle.router.store.state_folder import state_folder
from inference_bundle.router.tracing import Tracing

# The router's secret for the prefix caches' salts, in its state folder (made on first start).
CACHE_SALT_KEY = "cache_salt.key"


@dataclass
class RouterService:
    settings: RouterSettings
    table: RouteTable
    tracker: StateTracker
    pool: ExecutorPool
    dispatcher: Dispatcher
    authenticator: Authenticator
    metrics: Metrics
    job_listing: JobListing
    batches: BatchService
    limiter: Limiter
    placement: Placement  # which cluster a request on the one base URL goes to
    closers: list[Callable[[], None]] = field(default_factory=list)
    metrics_token: str | None = None  # what GET /metrics asks for when metrics.access is key
    config_path: Path | None = None  # the settings file, reread for new limits
    cache_salt_key: str = ""  # keys the prefix caches' salts (api.prefix_cache)
    media_hosts: HostCheck = field(default_factory=HostCheck)  # do media URLs' hosts resolve
    replica_metrics: ReplicaMetrics | None = None
    minute_series: MinuteSeries = field(default_factory=MinuteSeries)  # the status page's charts
    tracing: Tracing = field(default_factory=Tracing)  # off unless settings.tracing says where

    def shutdown(self) -> None:
        self.pool.shutdown()
        for close in self.closers:
            close()


def build_service(
    settings: RouterSettings,
    root: Path,
    sdk_executor: Callable[[], Any] = default_sdk_executor,
    config_path: Path | None = None,
) -> RouterService:
    """Load the catalogs this router serves and wire its parts together.

    ``sdk_executor`` makes the globus_compute_sdk Executor (tests pass their own).
    """
    catalogs: list[Catalog] = [load_catalog(root, cluster) for cluster in settings.clusters]
    table = RouteTable(catalogs)
    _check_groups(settings, table)
    check_limits(settings.limits, table, config_path)
    tracker = StateTracker()
    for route in table.routes():
        tracker.register(route.endpoint_name, route.spec.idle_timeout_s)
    state_dir = state_folder(settings, root)
    _make_private(settings, root, state_dir, config_path)
    closers: list[Callable[[], None]] = []
    if settings.executor == "engine":
        pool = ExecutorPool(engine_factory(catalogs, root / "templates", state_dir))
        batch_pool = ExecutorPool(one_replica(engine_batch_factory(state_dir)))
        job_listing = JobListing(catalogs)
    else:
        registries = {c.cluster: load_registry(root, c.cluster) for c in catalogs}
        submitter = SharedSubmitter(sdk_executor())
        closers.append(submitter.shutdown)
        pool = ExecutorPool(
            lambda route, replica: GlobusExecutor(
                route.endpoint_name, registries[route.cluster], submitter, replica
            )
        )
        # Each cluster lists its jobs through a small endpoint on its login node.
        jobs_endpoints = {
            c.cluster: GlobusExecutor(
                jobs_endpoint_name(c.cluster), registries[c.cluster], submitter
            )
            for c in catalogs
        }
        job_listing = JobListing(catalogs, remote=jobs_endpoints)
        batch_pool = ExecutorPool(
            lambda route, _replica: GlobusExecutor(
                batch_endpoint(route), registries[route.cluster], submitter
            )
        )
    plane = None
    if settings.data_plane.enabled:
        endpoints = {route.endpoint_name for route in table.routes()}
        plane = DataPlane(settings.data_plane, settings.dial_url(), endpoints)
    replicas = Replicas({r.endpoint_name: r.max_replicas for r in table.routes()})
    dispatcher = Dispatcher(
        pool,
        tracker,
        settings.wait_s,
        node_runtime.__version__,
        job_listing=job_listing,
        plane=plane,
        maintenance=Maintenance({c.cluster: c.profile for c in catalogs}),
        replicas=replicas,
        queue=settings.queue,
    )
    metrics = Metrics(lambda: [tracker.status(r.endpoint_name).state for r in table.routes()])
    replica_metrics = ReplicaMetrics(
        metrics.registry,
        lambda: [(r.model, replicas.of(r.endpoint_name)) for r in table.routes()],
    )
    metrics.registry.register(ConnectionsCollector(table, plane))
    QueueMetrics(metrics.registry).watch(dispatcher.admission)
    authenticator = build_authenticator(settings.auth, root)
    db = open_database(settings, state_dir)
    limiter = _limiter(settings, table, db, metrics, dispatcher.admission)
    batches = _batch_service(
        settings, catalogs, table, batch_pool, authenticator, state_dir, db, limiter
    )
    # Jobs cut by this router's stop are not failures: the next router resumes them.
    closers += [batches.runner.stop, batch_pool.shutdown, batches.shutdown]
    tracing = Tracing(settings.tracing)
    closers.append(tracing.shutdown)
    return RouterService(
        settings=settings,
        table=table,
        tracker=tracker,
        pool=pool,
        dispatcher=dispatcher,
        authenticator=authenticator,
        metrics=metrics,
        job_listing=job_listing,
        closers=closers,
        batches=batches,
        limiter=limiter,
        placement=_placement(tracker, dispatcher),
        metrics_token=metrics_token(settings.metrics, state_dir),
        config_path=config_path,
        cache_salt_key=_cache_salt_key(state_dir),
        replica_metrics=replica_metrics,
        tracing=tracing,
    )


def _cache_salt_key(state_dir: Path) -> str:
    """The router's secret for the prefix caches' salts, made on first start (0600)."""
    path = state_dir / CACHE_SALT_KEY
    try:
        return made_secret(path)
    except (OSError, UnicodeDecodeError) as err:
        raise AuthConfigError(f"state_dir: cannot read the cache salt key {path}: {err}") from None


def _placement(tracker: StateTracker, dispatcher: Dispatcher) -> Placement:
    """Where a model is hot: the tracker's states, the data plane's connections, the
    scheduler's estimates and the maintenance windows (``router.fleet.placement``)."""
    plane = dispatcher.plane
    return Placement(
        tracker,
        maintenance=dispatcher.maintenance,
        connected=None if plane is None else lambda route: plane.pick(route) is not None,
        eta_of=dispatcher.eta,
    )


def _limiter(
    settings: RouterSettings,
    table: RouteTable,
    db: Database,
    metrics: Metrics,
    admission: Admission,
) -> Limiter:
    """Limits and usage records over the store. A reservation outlives the longest a request
    may take (its wait for a start, then its answer) before it lapses on its own."""
    longest = max((r.spec.request_timeout_s for r in table.routes()), default=600.0)

    by_caller = CallerTokens(metrics.registry)

    def count_tokens(ticket: Ticket, prompt: int, completion: int) -> None:
        metrics.tokens.labels(ticket.model, "prompt").inc(prompt)
        metrics.tokens.labels(ticket.model, "completion").inc(completion)
        by_caller.count(ticket.user, ticket.group, prompt, completion)
        admission.charge(ticket.request_id, prompt, completion)  # the fair queues' counters

    return Limiter(
        Ledger(db),
        settings.limits,
        hold_s=settings.wait_s + longest + 60,
        keep_days=settings.store.keep_days,
        model_name=lambda cluster, name: _served_name(table, cluster, name),
        on_tokens=count_tokens,
    )


def _served_name(table: RouteTable, cluster: str, name: str) -> str:
    """The name a model is served under (an alias resolved); the name itself if unknown."""
    try:
        return table.lookup(name, cluster).model
    except APIError:
        return name


def _make_private(
    settings: RouterSettings, root: Path, state_dir: Path, config_path: Path | None
) -> None:
    """The state folder and its files the router's (or its file_group's), as an older
    router or a copy may have left them looser; the API keys its account's only."""
    access = file_access(settings.file_group, str(config_path or "router settings"))
    tighten_folder(state_dir, access)
    if isinstance(settings.auth, KeysAuthSettings) and settings.auth.keys_file:
        tighten(keys_file_path(settings.auth, root))


def _batch_service(
    settings: RouterSettings,
    catalogs: list[Catalog],
    table: RouteTable,
    batch_pool: ExecutorPool,
    authenticator: Authenticator,
    state_dir: Path,
    db: Database,
    limiter: Limiter,
) -> BatchService:
    """Batches: records in the store, jobs on each model's batch twin endpoint."""
    store = BatchStore(db)
    runner = BatchRunner(
        store,
        table,
        batch_pool.get,
        node_runtime.__version__,
        settings.batches.concurrency,
        limiter=limiter,
    )
    return BatchService(
        store=store,
        runner=runner,
        table=table,
        profiles={c.cluster: c.profile for c in catalogs},
        authenticator=authenticator,
        auth=settings.auth,
        files_dir=state_dir / "batches" / "files",
        max_file_bytes=settings.batches.max_file_bytes,
        upload_limits=settings.batches,
    )


def _check_groups(settings: RouterSettings, table: RouteTable) -> None:
    """In globus mode every group an endpoint names needs a Globus id, or nobody passes."""
    auth = settings.auth
    if auth.mode != "globus":
        return
    known = auth.globus.groups
    unknown = sorted(
        f"{route.entry.file} names group {group!r}"
        for route in table.routes()
        for group in route.entry.endpoint.groups
        if group not in known
    )
    if unknown:
        raise AuthConfigError(
            "auth.globus.groups: has no Globus group id for: "
            + "; ".join(unknown)
            + ". Add each group's id there."
        )


def warm_keeper(service: RouterService) -> WarmKeeper:
    """The keeper of a router's warm schedules, sending through its dispatcher."""
    dispatcher = service.dispatcher
    maintenance = dispatcher.maintenance
    if maintenance is None:  # a dispatcher built without profiles: no schedule to read
        return WarmKeeper([], Maintenance({}), dispatcher.ensure, _never_asked)
    return WarmKeeper(
        service.table.routes(),
        maintenance,
        dispatcher.ensure,
        lambda route: service.tracker.status(route.endpoint_name),
    )


def replica_control(service: RouterService) -> ReplicaControl:
    """The control of a router's replicas (none without a data plane: a replica is only
    used over its connection)."""
    dispatcher = service.dispatcher
    routes = service.table.routes() if dispatcher.plane is not None else []
    metrics = service.replica_metrics
    return ReplicaControl(
        routes,
        dispatcher,
        service.settings.replicas,
        on_change=None if metrics is None else metrics.changed,
    )


def _never_asked(route: Route) -> ModelStatus:
    raise AssertionError("a keeper without routes asked for a status")
