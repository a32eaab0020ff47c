"""The broker's error tree: one root, a stable machine code and an HTTP status per class.

Every error the broker's shell raises on purpose derives from :class:`BrokerError`.
The HTTP layer turns one into the JSON body ``{"error": {"code": ..., "message": ...}}``
with the class's status; anything else becomes ``internal_error`` (500) with the
detail in the log only. Foreign exceptions (SQLAlchemy, aio-pika, OS errors) are
translated at the boundary that meets them, ``raise Unavailable(...) from exc``,
so the cause stays chained for the log and never reaches a client.

::

    BrokerError                   (root; not raised itself)
    ├── BadRequest        bad_request          400  malformed id, parameter or body
    ├── Unauthenticated   unauthenticated      401  no verified client certificate
    ├── Forbidden         forbidden            403  the certificate's role may not do this
    ├── NotFound          not_found            404  no such resource, or not yours to see
    ├── MethodNotAllowed  method_not_allowed   405  the route exists, the method does not
    ├── InternalError     internal_error       500  a fault on the broker's side
    └── Unavailable       unavailable          503  a dependency (database, RabbitMQ) is away

Codes are part of the API contract: a client branches on them, so a code keeps
its meaning and spelling once published; the messages are for people and may
be reworded.

A message must never contain message content, a key, a personnummer or the
text of a foreign exception (which may hold a connection URL with a password):
it crosses to the client as it is. Put detail in the log instead.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "BrokerError",
    "Forbidden",
    "InternalError",
    "MethodNotAllowed",
    "NotFound",
    "Unauthenticated",
    "Unavailable",
    "error_body",
]


def error_body(code: str, message: str) -> dict[str, dict[str, object]]:
    """The JSON error body every failing HTTP response carries."""
    return {"error": {"code": code, "message": message}}


class BrokerError(Exception):
    """Root of every error the broker raises on purpose."""

    code: ClassVar[str] = "broker_error"
    http_status: ClassVar[int] = 500
    #: Said when the raiser gives no message of its own.
    default_message: ClassVar[str] = "The broker could not complete the request."

    def __init__(self, message: str | None = None) -> None:
        """Keep ``message`` (safe to show a client) or the class's default."""
        self.message = message if message is not None else self.default_message
        super().__init__(self.message)

    def body(self) -> dict[str, dict[str, object]]:
        """This error as the JSON error body."""
        return error_body(self.code, self.message)


class BadRequest(BrokerError):  # noqa: N818 - the name mirrors its stable code
    """The request is malformed: a bad id, parameter or body."""

    code = "bad_request"
    http_status = 400
    default_message = "The request is malformed."


class Unauthenticated(BrokerError):  # noqa: N818 - the name mirrors its stable code
    """The connection carries no verified client certificate."""

    code = "unauthenticated"
    http_status = 401
    default_message = "A client certificate from the area CA is required."


class Forbidden(BrokerError):  # noqa: N818 - the name mirrors its stable code
    """The peer is known, but its role may not do this."""

    code = "forbidden"
    http_status = 403
    default_message = "Your certificate's role may not do this."
    #: True once the refusal is in the audit log (the audit routes log it as a read);
    #: the HTTP layer logs every other refusal as an ``access_refused`` entry.
    audited: bool = False


class NotFound(BrokerError):  # noqa: N818 - the name mirrors its stable code
    """No such resource, or one the peer may not learn exists."""

    code = "not_found"
    http_status = 404
    default_message = "Not found."


class MethodNotAllowed(BrokerError):  # noqa: N818 - the name mirrors its stable code
    """The route exists but not with this HTTP method."""

    code = "method_not_allowed"
    http_status = 405
    default_message = "This method is not allowed on this resource."


class InternalError(BrokerError):
    """A fault on the broker's side; the detail is in the broker's log only."""

    code = "internal_error"
    http_status = 500
    default_message = "The broker failed on its side; the detail is in its log."


class Unavailable(BrokerError):  # noqa: N818 - the name mirrors its stable code
    """A dependency (the database, RabbitMQ) cannot be reached right now."""

    code = "unavailable"
    http_status = 503
    default_message = "The broker cannot serve this right now; try again later."
