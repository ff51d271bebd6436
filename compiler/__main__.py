"""`python -m anyplane.compiler` runs the CLI."""

from .cli import main

main()
