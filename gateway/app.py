"""`create_app(settings)`: the aiohttp application and the resources it owns.

Resources are `cleanup_ctx` entries registered in dependency order, so aiohttp
tears them down in reverse: backends stop before the client session closes,
and the session closes before the state database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from supervisor.manager import Manager, SupervisorConfig
from supervisor.ports import StateStore

from . import management, proxy
from .errors import error_middleware
from .keys import CLIENT_SESSION, MANAGER, REGISTRY, ROUTES, SETTINGS, STATE_STORE
from .launchers import mlflow_serve_factory
from .registry import Registry
from .settings import Settings

logger = logging.getLogger(__name__)


def supervisor_config(settings: Settings) -> SupervisorConfig:
    return SupervisorConfig(
        log_dir=settings.backend_log_dir,
        deploy_timeout=settings.deploy_timeout,
        stop_timeout=settings.stop_timeout,
        health_interval=settings.health_interval,
        health_failures=settings.health_failures,
        max_start_retries=settings.max_start_retries,
    )


async def _state_store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await StateStore.open(settings.state_db, settings.schema_path, settings.port_range)
    app[STATE_STORE] = store
    yield
    await store.close()


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = proxy.new_client_session(settings.max_connections, settings.backend_timeout)
    app[CLIENT_SESSION] = session
    yield
    await session.close()


async def _manager(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Probes get their own small pool, so a flood of inference calls never
    # starves the health checks that decide whether a backend is restarted.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=4.0)
    ) as probe_session:
        manager = Manager(
            app[STATE_STORE], mlflow_serve_factory(settings), supervisor_config(settings),
            probe_session,
        )  # fmt: skip
        app[MANAGER] = manager
        app[ROUTES] = manager.table
        await manager.restore()
        yield
        logger.info("stopping %d deployment(s)", len(manager.table))
        await manager.close()


def create_app(settings: Settings) -> web.Application:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=int(settings.max_body_mb * 1024 * 1024),
    )
    app[SETTINGS] = settings
    app[REGISTRY] = Registry(settings.tracking_uri)
    app.cleanup_ctx.append(_state_store)
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_manager)
    management.add_routes(app)
    proxy.add_routes(app)  # catch-all key routes last
    return app
