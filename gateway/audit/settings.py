"""Typed settings of the audit subsystem: where rows go, how they are batched, how long they live."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEMES = ("chdb", "http", "https")
CONTENT_MODES = ("full", "redacted", "hash_only", "none")


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Audit store, batching, spool and retention settings (built by the config loader).

    `dsn` is `chdb://DIR` (embedded chDB; DIR relative to the working directory, or
    `chdb:///abs/dir`) or `http(s)://user:pass@host:8123[/db]` (a ClickHouse server; a
    database named in the URL path overrides `database`). A retention of 0 days keeps rows
    (or payloads) forever.

    `isolation` is where the store runs. `process` (the default): in a child process of the
    gateway (spawned, never forked), so ClickHouse work and row building never hold the
    gateway's GIL and stall its event loop; a child that dies, or does not answer one call
    within `process_timeout_s` (opening gets at least 120 s), is killed, the batch is spooled,
    and the next call starts a new child. `thread`: on a thread of the gateway process, for
    environments where subprocesses are unwanted (it costs request latency under load).

    `content` is what a row keeps of the exchange's content: `full` (the previews as captured),
    `redacted` (previews with every credential and PII match replaced by a placeholder),
    `hash_only` (no content; the SHA-256 of the request and the response) or `none` (neither).
    """

    dsn: str = "chdb://./data/audit"
    database: str = "llm_gateway"
    table: str = "audit_log"
    batch_size: int = 1000
    flush_interval_s: float = 1.0
    spool_dir: str = "./data/spool"
    metadata_retention_days: int = 365
    payload_retention_days: int = 30
    replay_interval_s: float = 5.0
    max_queue: int = 100_000
    isolation: str = "process"
    process_timeout_s: float = 300.0
    content: str = "redacted"

    def __post_init__(self) -> None:
        if self.content not in CONTENT_MODES:
            raise ValueError(f"audit.content must be one of {', '.join(CONTENT_MODES)}, got {self.content!r}")
        scheme = urlsplit(self.dsn).scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"audit.dsn must start with chdb://, http:// or https:// (got scheme {scheme!r})"
            )
        if scheme == "chdb" and not chdb_path(self.dsn):
            raise ValueError("audit.dsn chdb:// needs a directory, e.g. chdb://./data/audit")
        for name in ("table", "database"):
            value = getattr(self, name)
            if not _IDENTIFIER.fullmatch(value):
                raise ValueError(f"audit.{name} must be a plain identifier [A-Za-z_][A-Za-z0-9_]*: {value!r}")
        if not _IDENTIFIER.fullmatch(self.target_database):
            raise ValueError(
                f"the database in audit.dsn must be a plain identifier: {self.target_database!r}"
            )
        for name in ("batch_size", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"audit.{name} must be at least 1")
        for name in ("flush_interval_s", "replay_interval_s", "process_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"audit.{name} must be a positive number of seconds")
        for name in ("metadata_retention_days", "payload_retention_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"audit.{name} must be 0 (keep forever) or a number of days")
        if not self.spool_dir:
            raise ValueError("audit.spool_dir must name a directory")
        if self.isolation not in ("process", "thread"):
            raise ValueError(f"audit.isolation must be process or thread, got {self.isolation!r}")

    @property
    def embedded(self) -> bool:
        """True for the in-process chDB store (one process may open it at a time)."""
        return self.dsn.startswith("chdb:")

    @property
    def target_database(self) -> str:
        """The database holding the audit table: the one in an http(s) DSN path, else `database`."""
        if self.embedded:
            return self.database
        path = unquote(urlsplit(self.dsn).path).strip("/")
        return path.split("/")[0] if path else self.database

    @property
    def qualified_table(self) -> str:
        """`database`.`table`, quoted for SQL."""
        return f"`{self.target_database}`.`{self.table}`"

    def redacted_dsn(self) -> str:
        """The DSN with any password replaced, for logs and status pages."""
        parts = urlsplit(self.dsn)
        if parts.password is None:
            return self.dsn
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    def redact(self, text: str) -> str:
        """`text` (an error message) with the DSN's password, as written or URL-decoded, replaced."""
        password = urlsplit(self.dsn).password
        for secret in (password, unquote(password or "")):
            if secret:
                text = text.replace(secret, "***")
        return text


def chdb_path(dsn: str) -> str:
    """The directory of a chdb:// DSN, taken literally (`chdb://./data/audit` → `./data/audit`)."""
    rest = dsn.removeprefix("chdb://").removeprefix("chdb:")
    return rest.split("?", 1)[0]
