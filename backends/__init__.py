"""Forwarding engines: each reads the IR (only) and emits artifacts for its target."""
