"""What an audit row keeps of an exchange's content (`audit.content`)."""

from __future__ import annotations

from collections.abc import Callable

# Previews are captured this much longer than they are kept, so that a secret cut by the
# preview's end is still whole when the redaction looks for it; the cut comes after.
REDACTION_MARGIN = 1024

Redact = Callable[[str], str]


class AuditContent:
    """Applies the content mode to the previews and error texts of one exchange's record.

    `full`: as captured. `redacted`: every credential and PII match replaced by its placeholder
    (`redact` is given the exchange's own matched values too, so a value found in a decoded
    message is also replaced where the preview shows it escaped). `hash_only`: no content, the
    hashes of the exact request and response bytes stay. `none`: no content and no hashes.
    """

    __slots__ = ("keeps_hashes", "keeps_text", "mode", "redacts", "request_chars", "response_chars")

    def __init__(self, mode: str = "full", request_chars: int = 4096, response_chars: int = 4096) -> None:
        self.mode = mode
        self.keeps_text = mode in ("full", "redacted")
        self.redacts = mode == "redacted"
        self.keeps_hashes = mode != "none"
        self.request_chars = request_chars
        self.response_chars = response_chars

    @property
    def capture_request_chars(self) -> int:
        """How much of a request to capture for its preview (kept: `request_chars`)."""
        return self.request_chars + REDACTION_MARGIN if self.redacts else self.request_chars

    @property
    def capture_response_chars(self) -> int:
        return self.response_chars + REDACTION_MARGIN if self.redacts else self.response_chars

    def text(self, text: str, limit: int, redact: Redact | None) -> str:
        """One preview or upstream message as the row keeps it, at most `limit` characters."""
        if not self.keeps_text or not text:
            return ""
        if self.redacts and redact is not None:
            text = redact(text)
        return text[:limit]
