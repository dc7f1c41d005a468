"""``python -m service_ambitions``."""

from service_ambitions.cli.app import main

main()
