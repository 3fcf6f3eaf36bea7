"""``python -m gateway`` is the ``deliberate`` command."""

from gateway.cli import main

main()
