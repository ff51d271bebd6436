"""`python -m anyplane` runs the command line."""

from anyplane.compiler.launch import main

main()
