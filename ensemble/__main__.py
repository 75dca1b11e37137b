"""``python -m ensemble`` runs the ``ensemble`` command."""

from ensemble.cli import main

main()
