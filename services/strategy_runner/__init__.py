"""Strategy runner: market ticks in, raw trading signals out."""
