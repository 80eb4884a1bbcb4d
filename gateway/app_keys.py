"""Typed keys of the resources the app holds (aiohttp `AppKey`s)."""

from __future__ import annotations

from aiohttp import web

from gateway.dataplane.admission import Admission
from gateway.dataplane.batching import Batcher
from gateway.dataplane.routing import Router
from gateway.dataplane.upstream import UpstreamPool
from gateway.deploy.aliases import AliasFollower
from gateway.deploy.launchers import Launcher
from gateway.deploy.registry import Registry
from gateway.deploy.service import DeployService
from gateway.edge.telemetry import GatewayMetrics
from gateway.records.stores.base import Store
from gateway.records.writer import InferenceLogger
from gateway.settings import Settings
from supervisor.deployment import Deployment
from supervisor.placement.base import Placement
from supervisor.state_store import StateStore

SETTINGS = web.AppKey("settings", Settings)
STATE_STORE = web.AppKey("state_store", StateStore)
REGISTRY = web.AppKey("registry", Registry)
# The routing table the proxy reads: the manager's own dict, looked up by exact key.
ROUTES = web.AppKey("routes", dict[str, Deployment])
STORE = web.AppKey("store", Store)
# None when GATEWAY_LOG_INPUTS=0.
INFERENCE_LOG: web.AppKey[InferenceLogger | None] = web.AppKey("inference_log")
METRICS = web.AppKey("metrics", GatewayMetrics)
# Adaptive batchers of the deployments that enabled batching, by key (the deploy
# service's own dict: it alone creates and closes them).
BATCHERS = web.AppKey("batchers", dict[str, Batcher])
# Admission control (slots, queue) of the deployments that set max_concurrency, by
# key (the deploy service's own dict, like BATCHERS).
ADMISSIONS = web.AppKey("admissions", dict[str, Admission])
# Weighted splits and shadows between versions, by model name (`/route/{name}`).
ROUTER = web.AppKey("router", Router)
# Deploy, replace, scale and undeploy: the only writer of deployment state.
DEPLOYER = web.AppKey("deployer", DeployService)
# Keeps alias deployments on the version their registry alias points at.
ALIASES = web.AppKey("aliases", AliasFollower)
# How backends start (the command factory) and whether dropped calls may be re-sent.
LAUNCHER = web.AppKey("launcher", Launcher)
# Where backends run (local processes, or a cluster).
PLACEMENT = web.AppKey("placement", Placement)
# The keep-alive connection pool every call to a backend goes through.
UPSTREAM = web.AppKey("upstream", UpstreamPool)
