"""Every piece of state the application holds, as typed keys (no module globals). The keys
of the reload machinery are defined with it (`reload`) and listed here too."""

from __future__ import annotations

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.config import GatewayConfig
from gateway.limiter.base import LimiterBackend
from gateway.observability.audit_trail import AuditTrail
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import Exchange
from gateway.reload import PATHS as PATHS
from gateway.reload import RELOADER as RELOADER
from gateway.reload import SHARED as SHARED
from gateway.stages.relay import LiveStreams
from gateway.tasks import BackgroundTasks
from gateway.upstream.health import HealthBook
from gateway.upstream.retry import RetryBudget

# The configuration the process started with: where the settings a reload cannot change
# (`server.*`, ...) are read. The one in force is `app[PATHS].current.config`.
CONFIG = web.AppKey("config", GatewayConfig)
LOG = web.AppKey("log", FilteringBoundLogger)
METRICS = web.AppKey("metrics", GatewayMetrics)
# The audit lines' writer (SIGUSR1 reopens its file).
AUDIT_TRAIL = web.AppKey("audit_trail", AuditTrail)
TASKS = web.AppKey("tasks", BackgroundTasks)
LIMITER = web.AppKey("limiter", LimiterBackend)
HEALTH = web.AppKey("health", HealthBook)
# Retries in flight across the whole process, whichever configuration started them.
RETRY_BUDGET = web.AppKey("retry_budget", RetryBudget)
# The streams being relayed now: a shutdown ends them at its drain deadline.
LIVE_STREAMS = web.AppKey("live_streams", LiveStreams)

# PATHS: the request paths in force (a holder whose `current` a reload replaces);
# RELOADER: what reloads them; SHARED: the parts every generation of them shares (set at
# start-up). See reload.py.

EXCHANGE = web.RequestKey("exchange", Exchange)
