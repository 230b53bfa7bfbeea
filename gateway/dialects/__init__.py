"""Upstream dialects by the name a configuration uses for them."""

from __future__ import annotations

from gateway.dialects.anthropic import AnthropicDialect
from gateway.dialects.base import UpstreamDialect
from gateway.dialects.openai import OpenAIDialect
from gateway.dialects.together import TogetherDialect
from gateway.dialects.vllm import VLLMDialect

DIALECTS: dict[str, UpstreamDialect] = {
    "anthropic": AnthropicDialect(),
    "openai": OpenAIDialect(),
    "together": TogetherDialect(),
    "vllm": VLLMDialect(),
}

__all__ = ["DIALECTS", "UpstreamDialect"]
