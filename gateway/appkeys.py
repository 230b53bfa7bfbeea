"""Every piece of state the application holds, as typed keys (no module globals)."""

from __future__ import annotations

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.stages.auth import Authenticator
from gateway.stages.route import Router
from gateway.upstream.client import UpstreamClient

CONFIG = web.AppKey("config", GatewayConfig)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
ROUTER = web.AppKey("router", Router)
UPSTREAMS = web.AppKey("upstreams", UpstreamClient)
LOG = web.AppKey("log", FilteringBoundLogger)

REQUEST_CONTEXT = web.RequestKey("request_context", RequestContext)
