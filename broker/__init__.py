"""The broker service: verify, apply policy, audit and route envelopes between agencies.

Built in issue #3 and after. Its pure core (policy, routing, status, deadlines,
Merkle math) will import no I/O; its shell speaks aio-pika, aiohttp and
SQLAlchemy. It never imports ``adapters`` and never holds a private key other
than its own signing key, nor the pseudonym key.
"""

__all__: list[str] = []
