"""The `anyplane` subcommands, one module per group of commands."""
