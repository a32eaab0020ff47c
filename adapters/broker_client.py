"""The adapter's client of the broker's HTTP API (mutual TLS, the agency's own certificate).

Today it reads one thing: the open-gaps view (``GET /v1/gaps``), so that the
web inbox can show the matters this agency sends or receives that are late
or nearly late. Every failure is one ``BrokerViewUnavailable``; the inbox
then says the overview is away rather than showing nothing as if all were well.
"""

from __future__ import annotations

import ssl
from datetime import datetime
from typing import Final

import aiohttp
import structlog

from adapters.ports import Gap

_log = structlog.get_logger("adapters.broker_client")

#: Matters due within this many hours count as "near".
NEAR_HOURS: Final = 24


class BrokerViewUnavailable(ConnectionError):  # noqa: N818 - a state of the broker, for the page
    """The broker's view could not be read (unreachable, refused, or malformed)."""


class BrokerClient:
    """GETs from the broker's mTLS API with this agency's client certificate."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, timeout_s: float = 10.0):
        self._base = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def gaps(self) -> list[Gap]:
        """This agency's open matters past or within ``NEAR_HOURS`` of their deadline."""
        url = f"{self._base}/v1/gaps"
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(url, params={"within_hours": str(NEAR_HOURS)}, ssl=self._ssl) as r,
            ):
                if r.status != 200:  # noqa: PLR2004 - HTTP OK
                    raise BrokerViewUnavailable(f"the broker answered {r.status}")
                body = await r.json()
            return [
                Gap(
                    message_id=str(m["message_id"]),
                    rule=str(m["rule"]),
                    kind=str(m["kind"]),
                    sender=str(m["sender"]),
                    recipient=None if m["recipient"] is None else str(m["recipient"]),
                    due_at=datetime.fromisoformat(str(m["due_at"])),
                    late_seconds=int(m["late_seconds"]),
                    state=str(m["state"]),
                    escalations=int(m["escalations"]),
                )
                for m in body["matters"]
            ]
        except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError) as exc:
            _log.warning("broker_view_unavailable", cause=type(exc).__name__)
            raise BrokerViewUnavailable("the broker's gaps view could not be read") from exc
