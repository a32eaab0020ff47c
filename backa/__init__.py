"""The ``backa`` command line: composes the sub-commands of every package.

It lives apart from ``broker`` and ``adapters`` so that it may import both
while they never import each other (docs/DECISIONS.md). No library code lives
here; import from ``keys``, ``schemas``, ``broker`` or ``adapters`` instead.
"""

__all__: list[str] = []
