"""Every piece of state the application holds, as typed keys (no module globals)."""

from __future__ import annotations

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.limiter.base import LimiterBackend
from gateway.observability.metrics import GatewayMetrics
from gateway.stages.auth import Authenticator
from gateway.stages.policy import PolicyStage
from gateway.stages.ratelimit import RateLimitStage
from gateway.stages.route import Router
from gateway.stages.safety import SafetyStage
from gateway.tasks import BackgroundTasks
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.health import HealthBook

CONFIG = web.AppKey("config", GatewayConfig)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
ROUTER = web.AppKey("router", Router)
UPSTREAMS = web.AppKey("upstreams", UpstreamCaller)
HEALTH = web.AppKey("health", HealthBook)
LOG = web.AppKey("log", FilteringBoundLogger)
AUDIT = web.AppKey("audit", FilteringBoundLogger)
POLICIES = web.AppKey("policies", PolicyStage)
SAFETY = web.AppKey("safety", SafetyStage)
METRICS = web.AppKey("metrics", GatewayMetrics)
TASKS = web.AppKey("tasks", BackgroundTasks)
LIMITER = web.AppKey("limiter", LimiterBackend)
RATE_LIMITS = web.AppKey("rate_limits", RateLimitStage)

REQUEST_CONTEXT = web.RequestKey("request_context", RequestContext)
