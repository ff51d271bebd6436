"""The anyplane front end: grammar, parser, checks, lowering and the CLI."""
