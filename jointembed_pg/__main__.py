"""``python -m jointembed_pg`` runs the ``jointembed`` CLI."""
from .cli import main

main()
