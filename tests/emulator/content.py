"""What the emulated models say, and the deterministic numbers that go with it."""

from __future__ import annotations

import base64
import hashlib
import struct
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

GREETING = "Hello from the emulator."
# Streams deliver the greeting in these deltas, so clients see more than one content event.
GREETING_PIECES: tuple[str, ...] = ("Hello", " from", " the", " emulator", ".")

# A request may name the answer text instead (percent-encoded UTF-8, since headers are Latin-1);
# streams then deliver it in pieces of this many characters, so a phrase spans several events.
ANSWER_HEADER = "x-emulator-answer"
ANSWER_PIECE_CHARS = 7


@dataclass(frozen=True, slots=True)
class Answer:
    """What the model says: the greeting, or the text the request named."""

    text: str = GREETING
    pieces: tuple[str, ...] = GREETING_PIECES

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Answer:
        named = headers.get(ANSWER_HEADER)
        if named is None:
            return cls()
        text = urllib.parse.unquote(named)
        pieces = tuple(text[i : i + ANSWER_PIECE_CHARS] for i in range(0, len(text), ANSWER_PIECE_CHARS))
        return cls(text, pieces or ("",))


# Every `created` timestamp the emulator reports (2023-11-14T22:13:20Z): fixed so that two runs of
# the same request produce identical bytes.
CREATED_AT = 1_700_000_000

# Large responses repeat this ASCII sentence: it needs no JSON escaping, so its byte length is its
# length in characters and it can be spliced into pre-serialized JSON.
FILLER_SENTENCE = "The quick brown fox jumps over the lazy dog. "
# One content delta of a large stream: about 1 KB, so 250 MB is ~250k events, cheap to generate.
STREAM_FILLER_PIECE = FILLER_SENTENCE * 22
# One chunk of a large non-streaming body.
BODY_FILLER_CHUNK = FILLER_SENTENCE * 1456  # ~64 KiB

# Token counts in usage are characters / CHARS_PER_TOKEN, plus a fixed prompt overhead (the role
# and formatting tokens a real tokenizer adds), so cached tokens can always be non-zero.
CHARS_PER_TOKEN = 4
PROMPT_OVERHEAD_TOKENS = 10
CACHE_CREATION_TOKENS = 2
REASONING_TOKENS = 8


def tokens_for(chars: int) -> int:
    """Tokens for that many characters of text, at least one."""
    return max(1, -(-chars // CHARS_PER_TOKEN))


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Provider-neutral token counts; each provider maps them onto its own usage fields.

    ``prompt`` includes ``cached`` and ``cache_creation``; ``output`` is visible text only and
    excludes ``reasoning``.
    """

    prompt: int
    cached: int
    cache_creation: int
    output: int
    reasoning: int

    @classmethod
    def estimate(cls, prompt_chars: int, output_chars: int) -> TokenUsage:
        prompt = PROMPT_OVERHEAD_TOKENS + tokens_for(prompt_chars)
        return cls(
            prompt=prompt,
            cached=prompt // 2,
            cache_creation=CACHE_CREATION_TOKENS,
            output=tokens_for(output_chars),
            reasoning=REASONING_TOKENS,
        )

    @property
    def uncached_prompt(self) -> int:
        """Prompt tokens neither read from nor written to the cache (Anthropic's input_tokens)."""
        return self.prompt - self.cached - self.cache_creation


@dataclass(frozen=True, slots=True)
class GeneratedText:
    """The answer text of a non-streaming response.

    ``text`` is either the answer itself or a placeholder that the sender replaces with ``length``
    characters of filler while writing (the large-body scenario), so usage can be computed first.
    """

    text: str
    length: int

    @classmethod
    def of(cls, text: str) -> GeneratedText:
        return cls(text, len(text))


# Unlikely to occur in any real document; survives JSON encoding unchanged.
LARGE_TEXT_PLACEHOLDER = "@@emulator-large-body-text@@"


def large_document_chunks(
    encode: Callable[[Mapping[str, Any]], bytes],
    render: Callable[[GeneratedText], Mapping[str, Any]],
    min_bytes: int,
) -> Iterator[bytes]:
    """A JSON document of at least ``min_bytes``, its answer text streamed as filler chunks.

    The document is rendered around a placeholder and split there, so only the filler, generated
    lazily, is large; usage in the document still matches the real text length.
    """
    placeholder = LARGE_TEXT_PLACEHOLDER.encode()
    overhead = len(encode(render(GeneratedText(LARGE_TEXT_PLACEHOLDER, min_bytes)))) - len(placeholder)
    # The margin covers usage numbers printed with fewer digits once the text length is final.
    length = max(0, min_bytes - overhead) + 64
    prefix, suffix = encode(render(GeneratedText(LARGE_TEXT_PLACEHOLDER, length))).split(placeholder, 1)
    yield prefix
    yield from filler_chunks(length)
    yield suffix


def text_chars(value: object) -> int:
    """Total length of all strings nested in a JSON value: a stand-in for a prompt's size."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(text_chars(item) for item in value.values())
    if isinstance(value, list):
        return sum(text_chars(item) for item in value)
    return 0


def large_stream_pieces(min_chars: int) -> Iterator[str]:
    """The greeting, then filler deltas until at least ``min_chars`` characters were produced."""
    produced = 0
    for piece in GREETING_PIECES:
        produced += len(piece)
        yield piece
    while produced < min_chars:
        produced += len(STREAM_FILLER_PIECE)
        yield STREAM_FILLER_PIECE


def filler_chunks(length: int) -> Iterator[bytes]:
    """Exactly ``length`` bytes of filler text, in chunks of about 64 KiB."""
    chunk = BODY_FILLER_CHUNK.encode()
    full, rest = divmod(length, len(chunk))
    for _ in range(full):
        yield chunk
    if rest:
        yield chunk[:rest]


# Keys that only change how a response is delivered, not what it says: excluded from the request
# digest so a gateway that turns on usage reporting still gets the same ids as a direct client.
_DELIVERY_KEYS = frozenset({"stream", "stream_options", "encoding_format"})


def request_digest(path: str, body: Mapping[str, Any] | None) -> str:
    """A hex digest of what was asked: ids derived from it repeat for identical requests."""
    content = {k: v for k, v in (body or {}).items() if k not in _DELIVERY_KEYS}
    payload = path.encode() + b"\n" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


def embedding_values(digest: str, index: int, dimensions: int) -> list[float]:
    """A deterministic vector; every value is exact in float32, so base64 and JSON floats agree."""
    seed = int(digest[:8], 16) + index * 104_729
    return [((seed + i * 7_919) % 2_048 - 1_024) / 16_384 for i in range(dimensions)]


def float32_base64(values: list[float]) -> str:
    """Little-endian float32 packed and base64-encoded, as OpenAI's encoding_format=base64."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
