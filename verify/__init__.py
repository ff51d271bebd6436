"""Verification with Z3: findings, reachability queries and semantic diff, over the IR only."""
