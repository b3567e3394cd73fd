"""Entry point: ``python -m jointembed_train ...`` (see :mod:`jointembed_train.cli`)."""
from .cli import main

main()
