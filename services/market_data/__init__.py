"""Simulated market-data feed: random-walk ticks on ``market.ticks``."""
