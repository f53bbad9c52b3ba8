"""llm-gateway: a transparent, audited, OpenTelemetry-native gateway for LLM provider APIs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llm-gateway")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
