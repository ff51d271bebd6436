"""`python -m anyplane.compiler` runs the CLI."""

from .launch import main

main()
