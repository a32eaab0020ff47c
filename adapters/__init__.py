"""Agency adapters: the agency side of Backa broker (issue #5).

An adapter runs at one agency, holds that agency's private keys and the area
pseudonym key, maps the agency system's own format to the wire contract and
back, and loses nothing while the broker or RabbitMQ is away. It never imports
``broker``.
"""

__all__: list[str] = []
