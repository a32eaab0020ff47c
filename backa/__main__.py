"""``python -m backa``: the same as the ``backa`` command."""

from backa.cli import main

main()
