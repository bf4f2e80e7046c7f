"""Run the CLI as ``python -m adapterhub``."""

from adapterhub.cli import main

main()
