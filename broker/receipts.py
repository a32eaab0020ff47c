"""The broker's own signed receipts: ``accepted`` and ``rejected``.

Pure. A receipt id is derived from what it says (UUIDv5 of the message id,
status and reason), so a receipt re-sent after a crash is the same receipt and
the sender's adapter de-duplicates it by id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime

from keys.envelope import SenderKey
from keys.signed import sign_receipt
from schemas.reasons import ReasonCode
from schemas.receipts import Receipt, SignedReceipt

#: Namespace of broker receipt ids (UUIDv5); fixed forever, part of the protocol.
RECEIPT_NAMESPACE = uuid.UUID("6b1d3c1e-6a0e-4f0e-9a51-0b6e5f2c9d10")


def receipt_id(message_id: str, status: str, reason: str = "") -> str:
    """The deterministic id of the broker's receipt for this message and outcome."""
    return str(uuid.uuid5(RECEIPT_NAMESPACE, f"{message_id}/{status}/{reason}"))


def _build(fields: dict[str, object]) -> Receipt:
    # Through JSON so that the strict model validates exactly what goes on the wire.
    return Receipt.model_validate_json(json.dumps(fields))


def accepted(
    *,
    message_id: str,
    digest: str,
    recipients: Sequence[str],
    broker: SenderKey,
    at: datetime,
    log_index: int | None = None,
) -> SignedReceipt:
    """The broker accepted and routed ``message_id`` to ``recipients``."""
    fields: dict[str, object] = {
        "v": 1,
        "id": receipt_id(message_id, "accepted"),
        "receipt_for": message_id,
        "acknowledges": digest,
        "status": "accepted",
        "by": {"agency": broker.agency, "kid": broker.kid},
        "at": at.isoformat(),
        "recipients": list(recipients),
    }
    if log_index is not None:
        fields["log_index"] = log_index
    return sign_receipt(_build(fields), broker)


def rejected(
    *, message_id: str, digest: str, reason: ReasonCode, broker: SenderKey, at: datetime
) -> SignedReceipt:
    """The broker refused ``message_id`` for ``reason``."""
    return sign_receipt(
        _build(
            {
                "v": 1,
                "id": receipt_id(message_id, "rejected", reason.value),
                "receipt_for": message_id,
                "acknowledges": digest,
                "status": "rejected",
                "by": {"agency": broker.agency, "kid": broker.kid},
                "at": at.isoformat(),
                "reason": reason.value,
            }
        ),
        broker,
    )
