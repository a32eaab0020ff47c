"""structlog configured once, for every process of the project.

Processors run in order: context variables first, then the level and a
timestamp, then the redaction processor that drops anything named like
content, a key or a personnummer, then JSON (or a console renderer on a TTY).
A log line must never carry what the broker is not allowed to store.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

#: Field names that must never reach a log line, whatever their value.
_FORBIDDEN = re.compile(
    r"(content|plaintext|ciphertext|personnummer|pnr|ssn|passphrase|password|secret|"
    r"private|cek|wrapped_key|token)",
    re.IGNORECASE,
)

#: Anything that looks like a Swedish personal identity number, in any value.
_PNR_LIKE = re.compile(r"(?<!\d)(?:\d{2})?\d{6}[-+]?\d{4}(?!\d)")

#: A UUID (message, matter and receipt ids): its groups are hex, and one in a hundred
#: UUIDv7s has a run of ten or twelve decimal digits that is no personnummer.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

REDACTED = "[redacted]"


def _mask(value: str) -> str:
    """``value`` with personnummer-like digits masked, outside any UUID it holds."""
    kept = 0
    parts: list[str] = []
    for found in _UUID.finditer(value):
        parts.append(_PNR_LIKE.sub(REDACTED, value[kept : found.start()]))
        parts.append(found.group())
        kept = found.end()
    parts.append(_PNR_LIKE.sub(REDACTED, value[kept:]))
    return "".join(parts)


def redact(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop forbidden fields and mask personnummer-like digits in string values."""
    for key in list(event_dict):
        if _FORBIDDEN.search(key):
            event_dict[key] = REDACTED
            continue
        value = event_dict[key]
        if isinstance(value, str) and _PNR_LIKE.search(value):
            event_dict[key] = _mask(value)
    return event_dict


def configure(
    *, json: bool | None = None, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Configure structlog for this process. Call once, at start-up.

    Logs go to ``stream`` (standard error by default), as JSON unless the
    stream is a terminal.
    """
    out = sys.stderr if stream is None else stream
    render_json = (not out.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if render_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
