"""`create_app(settings)`: the aiohttp application and the resources it owns.

Resources are `cleanup_ctx` entries registered in dependency order, so aiohttp
tears them down in reverse: after in-flight calls drain, backends stop, the
client session closes, the inference log flushes, and the stores close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway import console
from gateway.api import data as data_api
from gateway.api import hooks, management, ops, v2
from gateway.api import logs as logs_api
from gateway.api import routes as routes_api
from gateway.app_keys import (
    ADMISSIONS,
    ALIASES,
    BATCHERS,
    DEPLOYER,
    INFERENCE_LOG,
    LAUNCHER,
    METRICS,
    PLACEMENT,
    REGISTRY,
    ROUTER,
    ROUTES,
    SETTINGS,
    STATE_STORE,
    STORE,
    UPSTREAM,
)
from gateway.dataplane import proxy
from gateway.dataplane.routing import Router
from gateway.dataplane.upstream import UpstreamPool
from gateway.deploy.aliases import AliasFollower
from gateway.deploy.launchers import make_launcher
from gateway.deploy.placement import make_placement
from gateway.deploy.registry import Registry
from gateway.deploy.service import DeployService
from gateway.edge.auth import Authenticator, Scope, auth_middleware, load_htpasswd
from gateway.edge.dispatch import DISPATCH, InferenceFirst
from gateway.edge.request_ids import echo_request_id, flush_periodically
from gateway.edge.telemetry import GatewayMetrics
from gateway.errors import error_middleware
from gateway.quality.monitor import Monitor, drift_config
from gateway.records.privacy import Redactor, installation_key, parse_rules
from gateway.records.retention import DAY, RetentionJob
from gateway.records.stores.base import Store
from gateway.records.writer import InferenceLogger
from gateway.settings import Settings
from supervisor.manager import Manager, SupervisorConfig
from supervisor.state_store import StateStore

logger = logging.getLogger(__name__)


def supervisor_config(settings: Settings, pool: UpstreamPool) -> SupervisorConfig:
    """The supervisor's timing from the settings; a hung backend's calls fail in `pool`."""
    return SupervisorConfig(
        deploy_timeout=settings.deploy_timeout,
        stop_timeout=settings.stop_timeout,
        health_interval=settings.health_interval,
        health_failures=settings.health_failures,
        max_start_retries=settings.max_start_retries,
        on_hung=pool.abort,
    )


async def _state_store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await StateStore.open(settings.state_db)
    app[STATE_STORE] = store
    yield
    await store.close()


def make_store(settings: Settings) -> Store:
    """SQLite by default; MongoDB when MONGODB_URI is set (PyMongo imported only then)."""
    if settings.mongodb_uri:
        from gateway.records.stores.mongo import MongoStore

        return MongoStore(
            settings.mongodb_uri,
            settings.mongodb_database,
            retention_s=settings.log_retention_days * DAY or None,
        )
    from gateway.records.stores.sqlite import SQLiteStore

    return SQLiteStore(settings.inference_db)


async def _data_store(app: web.Application) -> AsyncIterator[None]:
    store = make_store(app[SETTINGS])
    await store.open()
    app[STORE] = store
    yield
    await store.close()


async def _inference_log(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.log_inputs:
        app[INFERENCE_LOG] = None
        yield
        return
    rules = parse_rules(settings.log_redact)
    redactor = (
        Redactor(rules, await asyncio.to_thread(installation_key, settings.data_dir))
        if rules
        else None
    )
    log = InferenceLogger(
        app[STORE],
        settings.journal_dir,
        batch_size=settings.log_batch_size,
        flush_interval=settings.log_flush_interval,
        max_pending=settings.log_max_pending,
        sample=settings.log_sample,
        redactor=redactor,
        max_rows=settings.log_max_rows_per_call,
        fsync=settings.log_fsync,
        fsync_interval=settings.log_fsync_interval,
        segment_bytes=max(int(settings.log_journal_segment_mb * 2**20), 4096),
        legacy_spool=settings.spool_dir,
    )
    await log.start()
    app[INFERENCE_LOG] = log
    yield
    await log.close()


async def _retention(app: web.Application) -> AsyncIterator[None]:
    """Deletes logged calls past GATEWAY_LOG_RETENTION_DAYS (none when it is 0)."""
    days = app[SETTINGS].log_retention_days
    job = RetentionJob(app[STORE], days) if days > 0 else None
    if job is not None:
        job.start()
    yield
    if job is not None:
        await job.close()


async def _monitor(app: web.Application) -> AsyncIterator[None]:
    """Drift and live metrics of every deployment, computed in a worker, for /metrics."""
    settings = app[SETTINGS]
    hashed = frozenset(n for n, a in parse_rules(settings.log_redact).items() if a == "hash")
    routes = app[ROUTES]
    monitor = Monitor(
        app[STORE],
        lambda: {k: (d.record.model_name, d.record.version) for k, d in routes.items()},
        interval=settings.monitor_interval_s,
        max_calls=settings.report_max_calls,
        max_chars=int(settings.report_max_mb * 1024 * 1024),
        max_features=settings.monitor_max_features,
        config=drift_config(settings, hashed),
    )
    app[METRICS].watch_quality(monitor)
    if settings.monitor_interval_s > 0:
        monitor.start()
    yield
    await monitor.close()


async def _upstream_pool(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = UpstreamPool(
        read_timeout=settings.backend_timeout,
        max_idle=settings.max_connections,
        resend_dropped=app[LAUNCHER].resend_safe,
    )
    app[UPSTREAM] = pool
    yield
    await pool.close()


async def _deployer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Probes get their own small pool, so a flood of inference calls never
    # starves the health checks that decide whether a backend is restarted.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=4.0)
    ) as probe_session:
        placement = make_placement(settings, app[STATE_STORE], app[LAUNCHER])
        app[PLACEMENT] = placement
        manager = Manager(
            app[STATE_STORE], placement, supervisor_config(settings, app[UPSTREAM]), probe_session
        )
        deployer = DeployService(
            manager, app[REGISTRY], app[STORE], app[METRICS], app[UPSTREAM],
            ready_timeout=settings.deploy_timeout,
        )  # fmt: skip
        app[DEPLOYER] = deployer
        app[BATCHERS] = deployer.batchers
        app[ADMISSIONS] = deployer.admissions
        router = Router(app[STATE_STORE], manager.table)
        app[ROUTER] = router
        app[ROUTES] = manager.table
        app[METRICS].watch(manager.table, lambda: app.get(INFERENCE_LOG))
        await deployer.restore()
        await router.restore()
        follower = AliasFollower(deployer, settings.alias_poll_s)
        app[ALIASES] = follower
        follower.start()
        yield
        await follower.close()
        await router.close()
        await deployer.close()
        await placement.close()


def _htpasswd(settings: Settings) -> dict[str, bytes] | None:
    if settings.htpasswd is None:
        return None
    try:
        return load_htpasswd(settings.htpasswd)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"GATEWAY_HTPASSWD: {exc}") from None


def make_authenticator(settings: Settings) -> Authenticator:
    return Authenticator(
        admin_token=settings.admin_token.get_secret_value() if settings.admin_token else None,
        inference_token=(
            settings.inference_token.get_secret_value() if settings.inference_token else None
        ),
        htpasswd=_htpasswd(settings),
        metrics_need_auth=settings.metrics_auth,
    )


def route_scopes() -> dict[object, Scope]:
    """Which access class each handler belongs to; anything unlisted is admin."""
    return {
        management.health: Scope.OPEN,
        # MLflow cannot send our tokens; the call is verified by its HMAC signature.
        hooks.mlflow_webhook: Scope.OPEN,
        ops.openapi_json: Scope.OPEN,
        ops.docs: Scope.OPEN,
        # The console's page and files hold no data; its API calls carry credentials.
        **dict.fromkeys(console.OPEN_HANDLERS, Scope.OPEN),
        ops.metrics: Scope.METRICS,
        proxy.invoke: Scope.INFERENCE,
        proxy.backend_get: Scope.INFERENCE,
        # Open Inference Protocol: health is open (probes), the rest is inference.
        v2.live: Scope.OPEN,
        v2.server_ready: Scope.OPEN,
        v2.server_metadata: Scope.INFERENCE,
        v2.model_metadata_handler: Scope.INFERENCE,
        v2.model_ready: Scope.INFERENCE,
        v2.infer: Scope.INFERENCE,
    }


async def _freeze_heap(app: web.Application) -> None:
    """Move everything loaded at start-up (MLflow, pandas, ...) out of the GC's sight.

    The gateway imports large libraries; without this each full collection walks
    millions of long-lived objects and stalls every request for tens of ms.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings) -> web.Application:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    middlewares: list[Middleware] = [error_middleware]
    authenticator = make_authenticator(settings)
    if authenticator.enabled:
        scopes = route_scopes()

        def scope_of(request: web.Request) -> Scope:
            return scopes.get(request.match_info.handler, Scope.ADMIN)

        # Inside the error middleware, so a refusal is a JSON 401/403 too.
        middlewares.append(auth_middleware(authenticator, scope_of))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=int(settings.max_body_mb * 1024 * 1024),
        handler_args={
            "max_line_size": settings.max_header_kb * 1024,
            "max_field_size": settings.max_header_kb * 1024,
        },
    )
    app[SETTINGS] = settings
    app[REGISTRY] = Registry(settings.tracking_uri)

    async def close_authenticator(app: web.Application) -> None:
        authenticator.close()  # its bcrypt threads

    app.on_cleanup.append(close_authenticator)
    metrics = GatewayMetrics()
    app[METRICS] = metrics
    app[LAUNCHER] = make_launcher(settings)
    app.on_response_prepare.append(echo_request_id)
    # The server's handler (see edge/serving.py): inference calls skip the router.
    app[DISPATCH] = InferenceFirst(app, authenticator)
    app.cleanup_ctx.append(flush_periodically)
    app.cleanup_ctx.append(_state_store)
    app.cleanup_ctx.append(_data_store)
    app.cleanup_ctx.append(_inference_log)
    app.cleanup_ctx.append(_retention)
    app.cleanup_ctx.append(_upstream_pool)
    app.cleanup_ctx.append(_deployer)
    app.cleanup_ctx.append(_monitor)
    management.add_routes(app)
    data_api.add_routes(app)
    ops.add_routes(app)
    logs_api.add_routes(app)
    console.add_routes(app)  # before the catch-all: /ui/... is no key
    hooks.add_routes(app)
    routes_api.add_routes(app)
    v2.add_routes(app)
    proxy.add_routes(app)  # catch-all key routes last
    app.on_startup.append(_freeze_heap)
    return app
