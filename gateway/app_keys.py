"""Typed keys of the resources the app holds (aiohttp `AppKey`s)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.dataplane.upstream import UpstreamPool
from gateway.deploy.registry import Registry
from gateway.edge.telemetry import GatewayMetrics
from gateway.records.stores.base import Store
from gateway.records.writer import InferenceLogger
from gateway.settings import Settings
from supervisor.deployment import Deployment
from supervisor.manager import Manager
from supervisor.state_store import StateStore

SETTINGS = web.AppKey("settings", Settings)
STATE_STORE = web.AppKey("state_store", StateStore)
MANAGER = web.AppKey("manager", Manager)
REGISTRY = web.AppKey("registry", Registry)
# The routing table the proxy reads: the manager's own dict, looked up by exact key.
ROUTES = web.AppKey("routes", dict[str, Deployment])
STORE = web.AppKey("store", Store)
# None when GATEWAY_LOG_INPUTS=0.
INFERENCE_LOG: web.AppKey[InferenceLogger | None] = web.AppKey("inference_log")
METRICS = web.AppKey("metrics", GatewayMetrics)
# Adaptive batchers of the deployments that enabled batching, by key.
BATCHERS: web.AppKey[dict[str, Any]] = web.AppKey("batchers")  # values: batching.Batcher
# The keep-alive connection pool every call to a backend goes through.
UPSTREAM = web.AppKey("upstream", UpstreamPool)
