"""``python -m streamnorm`` runs the command line."""

from streamnorm.cli import main

main()
