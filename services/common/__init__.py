"""Helpers the trading services share: envelope checks, latency, logging, history."""
