"""anyplane test suite."""
