"""`python -m anyplane.compiler` runs the CLI."""

from .launch import main

if __name__ == "__main__":  # not when a worker process imports it (multiprocessing spawn)
    main()
