"""Every piece of state the application holds, as typed keys (no module globals)."""

from __future__ import annotations

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.config import GatewayConfig
from gateway.limiter.base import LimiterBackend
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import Exchange, Pipeline
from gateway.stages.relay import LiveStreams
from gateway.tasks import BackgroundTasks
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.health import HealthBook

CONFIG = web.AppKey("config", GatewayConfig)
LOG = web.AppKey("log", FilteringBoundLogger)
METRICS = web.AppKey("metrics", GatewayMetrics)
TASKS = web.AppKey("tasks", BackgroundTasks)
LIMITER = web.AppKey("limiter", LimiterBackend)
HEALTH = web.AppKey("health", HealthBook)
UPSTREAMS = web.AppKey("upstreams", UpstreamCaller)
# The streams being relayed now: a shutdown ends them at its drain deadline.
LIVE_STREAMS = web.AppKey("live_streams", LiveStreams)

# The request paths, built once when the app starts (see app.py).
CHAT = web.AppKey("chat", Pipeline)
MODEL_LIST = web.AppKey("model_list", Pipeline)
MODEL_INFO = web.AppKey("model_info", Pipeline)

EXCHANGE = web.RequestKey("exchange", Exchange)
