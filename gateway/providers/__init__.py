"""Provider adapters by kind. A new kind is one new module plus one line here."""

from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import ProviderAdapter
from gateway.providers.gemini import GeminiAdapter
from gateway.providers.openai import OpenAIAdapter

ADAPTERS: dict[str, ProviderAdapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
}

__all__ = ["ADAPTERS", "ProviderAdapter"]
