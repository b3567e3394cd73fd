"""Entry point: ``python -m training ...`` (see :mod:`training.cli`)."""
from .cli import main

main()
