"""Encoded trace exports delivered over OTLP/HTTP (protobuf) or OTLP/gRPC.

Configured by the standard variables, read the way the Python SDK's exporters read them (so one
environment configures the gateway's spans and its SDK-exported metrics alike):
`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT / PROTOCOL / HEADERS / TIMEOUT (seconds, as the Python SDK
reads it) / COMPRESSION / CERTIFICATE / CLIENT_KEY / CLIENT_CERTIFICATE / INSECURE` (gRPC).
Transient failures (HTTP 429/502/503/504, connection errors, the retryable gRPC codes) are
retried with exponential backoff within the export timeout; then the batch is dropped and logged.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import random
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.util.re import parse_env_headers

from gateway import __version__

log = logging.getLogger(__name__)

HTTP_PROTOBUF, GRPC = "http/protobuf", "grpc"
_RETRYABLE_HTTP = frozenset((429, 502, 503, 504))
_RETRYABLE_GRPC = frozenset(
    (
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNAVAILABLE",
        "DATA_LOSS",
    )
)
_MAX_ATTEMPTS = 6
_GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_USER_AGENT = f"llm-gateway/{__version__}"


def _setting(env: Mapping[str, str], name: str) -> str:
    """`OTEL_EXPORTER_OTLP_TRACES_<name>`, else `OTEL_EXPORTER_OTLP_<name>`, else ""."""
    return (
        env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}") or ""
    ).strip()


@dataclass(frozen=True, slots=True)
class OtlpTarget:
    """Where and how trace exports go."""

    protocol: str = HTTP_PROTOBUF
    endpoint: str = "http://localhost:4318/v1/traces"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 10.0
    compression: str = "none"  # none | gzip | deflate
    certificate: str = ""  # CA bundle for TLS
    client_key: str = ""
    client_certificate: str = ""
    insecure: bool = False  # gRPC: plaintext channel

    @classmethod
    def for_traces(cls, env: Mapping[str, str], protocol: str) -> OtlpTarget:
        if protocol == GRPC:
            endpoint = _setting(env, "ENDPOINT") or "http://localhost:4317"
            scheme = urlsplit(endpoint).scheme
            flag = _setting(env, "INSECURE").lower()
            insecure = scheme != "https" and (flag == "true" if flag else scheme == "http")
        else:
            specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
            endpoint = specific or base.rstrip("/") + "/v1/traces"
            insecure = False
        raw_timeout = _setting(env, "TIMEOUT")
        try:
            timeout = float(raw_timeout) if raw_timeout else 10.0
        except ValueError:
            log.warning("OTEL_EXPORTER_OTLP_TIMEOUT=%s is not a number of seconds; using 10", raw_timeout)
            timeout = 10.0
        compression = _setting(env, "COMPRESSION").lower() or "none"
        if compression not in ("none", "gzip", "deflate"):
            log.warning(
                "OTEL_EXPORTER_OTLP_COMPRESSION=%s is not supported; sending uncompressed", compression
            )
            compression = "none"
        return cls(
            protocol=protocol,
            endpoint=endpoint,
            headers=tuple(parse_env_headers(_setting(env, "HEADERS"), liberal=True).items()),
            timeout_s=timeout,
            compression=compression,
            certificate=_setting(env, "CERTIFICATE"),
            client_key=_setting(env, "CLIENT_KEY"),
            client_certificate=_setting(env, "CLIENT_CERTIFICATE"),
            insecure=insecure,
        )


# One attempt: (delivered, retryable, server-requested delay in seconds or None).
Attempt = Callable[[float], tuple[bool, bool, float | None]]


def send_with_retries(attempt: Attempt, timeout_s: float, stopping: threading.Event, what: str) -> bool:
    """Call `attempt` until it delivers, fails for good, or the timeout or shutdown stops the backoff."""
    deadline = time.monotonic() + timeout_s
    for n in range(_MAX_ATTEMPTS):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        delivered, retryable, retry_after = attempt(remaining)
        if delivered:
            return True
        if not retryable:
            return False
        delay = retry_after if retry_after is not None else 2**n * random.uniform(0.8, 1.2)
        if time.monotonic() + delay >= deadline or stopping.wait(delay):
            break
    log.warning("%s: giving up after retries", what)
    return False


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _warn_partial_success(body: bytes, endpoint: str) -> None:
    if not body:
        return
    try:
        partial = ExportTraceServiceResponse.FromString(body).partial_success
    except Exception:  # a collector's reply we cannot read is not a failed export
        return
    if partial.rejected_spans or partial.error_message:
        log.warning("%s rejected %d spans: %s", endpoint, partial.rejected_spans, partial.error_message)


class HttpSender:
    """POSTs ExportTraceServiceRequest bodies over one kept-alive connection (http.client)."""

    def __init__(self, target: OtlpTarget) -> None:
        parts = urlsplit(target.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OTLP traces endpoint {target.endpoint!r} is not an http(s) URL")
        self._endpoint = target.endpoint
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._tls: ssl.SSLContext | None = None
        if self._https:
            self._tls = ssl.create_default_context(cafile=target.certificate or None)
            if target.client_certificate:
                self._tls.load_cert_chain(target.client_certificate, target.client_key or None)
        self._compression = target.compression
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": _USER_AGENT}
        self._headers.update(dict(target.headers))
        if target.compression != "none":
            self._headers["Content-Encoding"] = target.compression
        self._connection: http.client.HTTPConnection | None = None
        self._stopping = threading.Event()

    def send(self, payload: bytes, timeout_s: float) -> bool:
        if self._compression == "gzip":
            payload = gzip.compress(payload, compresslevel=6)
        elif self._compression == "deflate":
            payload = zlib.compress(payload)

        def attempt(remaining: float) -> tuple[bool, bool, float | None]:
            try:
                status, retry_after, body = self._post(payload, remaining)
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                log.debug("OTLP export to %s failed: %s", self._endpoint, exc)
                return False, True, None
            if 200 <= status < 300:
                _warn_partial_success(body, self._endpoint)
                return True, False, None
            log.warning(
                "OTLP export to %s: HTTP %d %s", self._endpoint, status, body[:200].decode(errors="replace")
            )
            return False, status in _RETRYABLE_HTTP, _retry_after(retry_after)

        return send_with_retries(attempt, timeout_s, self._stopping, f"OTLP export to {self._endpoint}")

    def _post(self, body: bytes, timeout_s: float) -> tuple[int, str | None, bytes]:
        connection = self._connection
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            self._connection = connection
        elif connection.sock is not None:
            connection.sock.settimeout(timeout_s)
        connection.request("POST", self._path, body, self._headers)
        response = connection.getresponse()
        data = response.read()
        if response.will_close:
            self._close()
        return response.status, response.getheader("Retry-After"), data

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def shutdown(self) -> None:
        self._stopping.set()
        self._close()


class GrpcSender:
    """Calls TraceService/Export with the encoded request as the raw message bytes."""

    def __init__(self, target: OtlpTarget) -> None:
        import grpc  # only when asked for: importing grpc costs ~0.1 s at startup

        parts = urlsplit(target.endpoint)
        address = parts.netloc if parts.netloc else target.endpoint
        compression = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}.get(
            target.compression, grpc.Compression.NoCompression
        )
        if target.insecure:
            self._channel = grpc.insecure_channel(address, compression=compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(target.certificate),
                private_key=_read(target.client_key),
                certificate_chain=_read(target.client_certificate),
            )
            self._channel = grpc.secure_channel(address, credentials, compression=compression)
        # No (de)serializers: the request is already the protobuf bytes, the reply stays bytes.
        self._export: Any = self._channel.unary_unary(_GRPC_METHOD)
        self._metadata = (*((k.lower(), v) for k, v in target.headers), ("user-agent", _USER_AGENT))
        self._endpoint = target.endpoint
        self._rpc_error = grpc.RpcError
        self._stopping = threading.Event()

    def send(self, payload: bytes, timeout_s: float) -> bool:
        def attempt(remaining: float) -> tuple[bool, bool, float | None]:
            try:
                reply = self._export(payload, timeout=remaining, metadata=self._metadata)
            except self._rpc_error as exc:
                code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
                log.warning("OTLP export to %s: gRPC %s", self._endpoint, code)
                return False, code in _RETRYABLE_GRPC, None
            _warn_partial_success(reply, self._endpoint)
            return True, False, None

        return send_with_retries(attempt, timeout_s, self._stopping, f"OTLP export to {self._endpoint}")

    def shutdown(self) -> None:
        self._stopping.set()
        self._channel.close()


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def sender_for(target: OtlpTarget) -> HttpSender | GrpcSender:
    return GrpcSender(target) if target.protocol == GRPC else HttpSender(target)
