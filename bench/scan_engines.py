"""`python -m bench.scan_engines`: the scan engines (Python re, RE2, Hyperscan) on the same texts.

Every engine runs the whole default detector table over:

* a realistic 100 KB prompt (prose with typographic quotes, Python code, JSON tool results,
  five secrets and five pieces of PII), as is and as pure ASCII;
* 1 MB of adversarial near matches of every pattern family, and a few single-family ones;
* huge single strings (1 MB of one letter, a 4 MB base64 blob);
* many small texts: chat messages of ~200 characters, and a stream cut into 64-character
  windows (per-call overhead: a request has many messages, a stream many chunks).

It reports µs per call (median of rounds) and MB/s, checks that every engine returns the
same matches, prints Markdown tables and writes bench/results/scan.json (`--out`).
Fake secrets are generated, never written out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gateway.stages.scan.detectors import DETECTORS
from gateway.stages.scan.engines import ENGINE_NAMES, build_engine, engine_available
from gateway.stages.scan.scanner import ScanEngine

RESULTS = Path(__file__).parent / "results" / "scan.json"
MB = 1_000_000
ALNUM = string.ascii_letters + string.digits


def say(message: str) -> None:
    print(f"[scan-bench] {message}", file=sys.stderr, flush=True)


# --- corpora -------------------------------------------------------------------------------------


def _fake(rnd: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


def _luhn_complete(prefix: str, length: int, rnd: random.Random) -> str:
    body = prefix + "".join(rnd.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _iban(country: str, bban: str) -> str:
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


WORDS = (
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "for", "was", "on", "are", "as", "with",
    "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "word", "but", "what",
    "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how",
    "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many",
    "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing", "see",
    "him", "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no",
    "most", "people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down",
    "side", "been", "now", "find", "any", "new", "work", "part", "take", "get", "place", "made",
    "live", "where", "after", "back", "little", "only", "round", "man", "year", "came", "show",
    "every", "good", "me", "give", "our", "under", "name", "very", "through", "just", "form",
    "sentence", "great", "think", "say", "help", "low", "line", "differ", "turn", "cause", "much",
    "mean", "before", "move", "right", "boy", "old", "too", "same", "tell", "does", "set", "three",
    "want", "air", "well", "also", "play", "small", "end", "put", "home", "read", "hand", "port",
    "large", "spell", "add", "even", "land", "here", "must", "big", "high", "such", "follow", "act",
    "why", "ask", "men", "change", "went", "light", "kind", "off", "need", "house", "picture", "try",
    "us", "again", "animal", "point", "mother", "world", "near", "build", "self", "earth", "father",
    "model", "prompt", "token", "request", "system", "instructions", "previous", "ignore", "server",
    "deploy", "database", "password", "secret", "key", "version",
)  # fmt: skip

CODE = '''
@dataclass(frozen=True, slots=True)
class Settings:
    """Typed configuration: values come from the environment, never from the source."""

    api_key: str = field(default_factory=lambda: os.environ["SERVICE_API_KEY"])
    password: Optional[str] = None
    timeout_s: float = 30.0

    def client(self) -> httpx.Client:
        headers = {{"Authorization": f"Bearer {{self.api_key}}", "x-request-id": "{uuid}"}}
        base_url = "https://api.internal.example/v{n}"
        return httpx.Client(base_url=base_url, headers=headers, timeout=self.timeout_s)


def retry(attempts: int = 3) -> Callable[[F], F]:
    # commit {sha}: back off 2 ** attempt seconds, cap at 30
    for attempt in range(attempts):
        if attempt > 2 and status in (429, 503):
            time.sleep(min(30, 2**attempt))
'''

JSON_RESULT = (
    '{{"id": "{uuid}", "object": "tool.result", "created": {ts}, "status": "ok", '
    '"items": [{{"sku": "A-{n}", "qty": {q}, "price": {p}.99, "tags": ["red", "xl"]}}], '
    '"trace": "{sha}", "version": "2.{n}.{q}", "elapsed_ms": {q}.{n}}}\n'
)


def realistic_prompt(
    size: int = 100_000, seed: int = 7, ascii_only: bool = False, prose_only: bool = False
) -> str:
    """Prose, code and JSON, with five secrets and five pieces of PII spread through it
    (`prose_only`: prose alone, nothing planted: what a clean conversation costs)."""
    rnd = random.Random(seed)
    quote_open, quote_close = ('"', '"') if ascii_only else ("\u201c", "\u201d")
    apostrophe = "'" if ascii_only else "\u2019"
    secrets = [
        f"OPENAI_API_KEY=sk-proj-{_fake(rnd, 48, ALNUM + '-_')}",
        f"aws_access_key_id = AKIA{_fake(rnd, 16, string.ascii_uppercase + string.digits)}",
        f"DATABASE_URL=postgres://app:{_fake(rnd, 18)}@db.internal:5432/app",
        "DefaultEndpointsProtocol=https;AccountName=prodlogs;AccountKey="
        + base64.b64encode(rnd.randbytes(64)).decode()
        + ";EndpointSuffix=core.windows.net",
        "token: "
        + ".".join(
            base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in (b'{"alg":"HS256"}', b'{"sub":"42"}')
        )
        + "."
        + _fake(rnd, 43, ALNUM + "-_"),
    ]
    pii = [
        "Contact: maria.garcia@fastmail.fm",
        "Call me on +44 20 7946 0321 after five.",
        f"card {_luhn_complete('4539', 16, rnd)} exp 09/29",
        f"IBAN {_iban('DE', '37040044' + ''.join(rnd.choice(string.digits) for _ in range(10)))}",
        "SSN 512-44-8721",
    ]
    planted = [] if prose_only else secrets + pii
    parts: list[str] = []
    length = 0
    slot = size // (len(planted) + 1)
    next_plant = slot
    while length < size:
        kind = 0.0 if prose_only else rnd.random()
        if kind < 0.6:
            words = [rnd.choice(WORDS) for _ in range(rnd.randint(40, 120))]
            sentence = " ".join(words).capitalize()
            chunk = f"{sentence} {quote_open}{rnd.choice(WORDS)}{quote_close}, isn{apostrophe}t it? "
            day = f"2024-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}"
            chunk += f"See https://docs.python.org/3/library/re.html on {day}.\n\n"
        elif kind < 0.8:
            chunk = CODE.format(uuid=_uuid(rnd), n=rnd.randint(1, 9), sha=_fake(rnd, 40, "0123456789abcdef"))
        else:
            chunk = JSON_RESULT.format(
                uuid=_uuid(rnd),
                ts=1_700_000_000 + rnd.randint(0, 10**7),
                n=rnd.randint(1, 999),
                q=rnd.randint(1, 99),
                p=rnd.randint(1, 500),
                sha=_fake(rnd, 40, "0123456789abcdef"),
            )
        if length >= next_plant and planted:
            chunk += planted.pop(0) + "\n"
            next_plant += slot
        parts.append(chunk)
        length += len(chunk)
    if not ascii_only:
        parts.insert(len(parts) // 2, "Thanks \U0001f642 \u2014 caf\u00e9 na\u00efve r\u00e9sum\u00e9.\n")
    return "".join(parts)[:size]


def _uuid(rnd: random.Random) -> str:
    h = _fake(rnd, 32, "0123456789abcdef")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


NEAR_MISSES = (
    "sk-", "sk-ant-", "AKIA", "ghp_", "glpat-", "xoxb-", "eyJ", "eyJhbGciOi.eyJ", "AIza", "hf_", "Bearer ",
    "password=", 'api_key: "', "://user:", "AccountKey=", "sig=", ";Pwd=", "Q~", "-----BEGIN ",
    "ignore all the ", "you are now ", "act as an ", "<|", "[INST", "</s", "\n\nHuman", "\nSystem",
    "\u200b", "\u202a", "\U000e0041", "@", "a@b.", "+44 20 ", "(415) 555-", "4111 1111 ", "078-05-",
    "DE89 3704 ", "192.168.", "fe80::", "12:30:45 ", "1.2.3.4.5 ",
)  # fmt: skip


def adversarial_corpora(size: int = MB) -> dict[str, str]:
    """1 MB inputs built to make a matcher work: near misses of every pattern family, and runs."""
    rnd = random.Random(11)
    mixed: list[str] = []
    length = 0
    while length < size:
        piece = rnd.choice(NEAR_MISSES) + _fake(rnd, rnd.randint(0, 12))
        mixed.append(piece)
        length += len(piece)
    return {
        "near_misses_mixed_1mb": "".join(mixed)[:size],
        "repeated_sk_prefix_1mb": ("sk-" * (size // 3 + 1))[:size],
        "repeated_assignment_1mb": ("password=" * (size // 9 + 1))[:size],
        "digits_and_dashes_1mb": ("4111-1111-" * (size // 10 + 1))[:size],
        "at_signs_1mb": ("a@b." * (size // 4 + 1))[:size],
        "zero_width_between_letters_1mb": ("a\u200b" * (size // 2 + 1))[:size],
    }


def huge_strings() -> dict[str, str]:
    return {
        "one_letter_1mb": "a" * MB,
        "base64_blob_4mb": base64.b64encode(random.Random(3).randbytes(3 * MB)).decode(),
    }


def small_texts(count: int = 1000, seed: int = 5) -> list[str]:
    rnd = random.Random(seed)
    return [
        " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(25, 45))).capitalize() + "."
        for _ in range(count)
    ]


def stream_windows(text: str, width: int = 64) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


# --- measuring -----------------------------------------------------------------------------------


def time_call(call: Callable[[], object], min_seconds: float, rounds: int) -> list[float]:
    """Seconds per call, one figure per round; each round repeats `call` for at least `min_seconds`."""
    call()  # warm-up
    figures = []
    for _ in range(rounds):
        n, started = 0, time.perf_counter()
        while True:
            call()
            n += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        figures.append(elapsed / n)
    return figures


def measure(
    engines: dict[str, ScanEngine], cases: dict[str, list[str]], min_seconds: float, rounds: int
) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    for case, texts in cases.items():
        chars = sum(len(t) for t in texts)
        reference = [engines["re"].scan(t) for t in texts] if "re" in engines else None
        results[case] = {}
        for name, engine in engines.items():
            if reference is not None and [engine.scan(t) for t in texts] != reference:
                raise SystemExit(f"{name} disagrees with the reference engine on {case}")

            def run(engine: ScanEngine = engine, texts: list[str] = texts) -> None:
                for t in texts:
                    engine.scan(t)

            per_batch = statistics.median(time_call(run, min_seconds, rounds))
            results[case][name] = {
                "us_per_call": per_batch / len(texts) * 1e6,
                "mb_per_s": chars / per_batch / MB,
                "calls": len(texts),
                "chars": chars,
            }
            say(f"{case:34s} {name:9s} {per_batch / len(texts) * 1e6:12.1f} µs/call")
    return results


def markdown(results: dict[str, dict[str, dict[str, float]]], names: list[str]) -> str:
    head = "| text | " + " | ".join(f"{n} µs/call (MB/s)" for n in names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    for case, by_engine in results.items():
        cells = []
        for n in names:
            r = by_engine.get(n)
            cells.append("—" if r is None else f"{r['us_per_call']:,.1f} ({r['mb_per_s']:,.0f})")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(n for n in ENGINE_NAMES if n != "auto"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.2, help="per round and case")
    parser.add_argument("--quick", action="store_true", help="1 round of 0.05 s: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.min_seconds = 1, 0.05
    names = [n for n in args.engines.split(",") if engine_available(n)]  # type: ignore[arg-type]
    engines: dict[str, ScanEngine] = {}
    build_s: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        engines[name] = build_engine(DETECTORS, name)  # type: ignore[arg-type]
        build_s[name] = time.perf_counter() - started
    prompt = realistic_prompt()
    cases: dict[str, list[str]] = {
        "prompt_100kb": [prompt],
        "prompt_100kb_ascii": [realistic_prompt(ascii_only=True)],
        "clean_prose_100kb": [realistic_prompt(prose_only=True)],
        **{k: [v] for k, v in adversarial_corpora().items()},
        **{k: [v] for k, v in huge_strings().items()},
        "chat_messages_200b_x1000": small_texts(),
        "stream_windows_64b": stream_windows(prompt[:20_000]),
    }
    found = {m.rule for m in engines[names[0]].scan(prompt)}
    say(f"rules firing on the 100 KB prompt: {', '.join(sorted(found))}")
    results = measure(engines, cases, args.min_seconds, args.rounds)
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()},
        "rules": len(DETECTORS),
        "patterns": sum(len(d.patterns) for d in DETECTORS),
        "engine_build_s": build_s,
        "rules_on_prompt": sorted(found),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("Engine build: " + ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in build_s.items()))
    print()
    print(markdown(results, names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
