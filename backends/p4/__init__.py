"""The fabric engine: a P4_16 (v1model) program, its P4Info and P4Runtime table entries."""
