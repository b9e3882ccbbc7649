"""``python -m imgclf`` runs the CLI."""

from imgclf.cli import main

main()
