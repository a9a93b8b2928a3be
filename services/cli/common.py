"""What every ``tradestream`` command shares: settings loading, consoles, failing clearly."""

from __future__ import annotations

import typer
from rich.console import Console

from core.config.settings import Settings, SettingsError, load_settings

console = Console()
err = Console(stderr=True)

WIDE_COLUMNS = 250
"""Width used by ``--wide`` output: wide enough that no column is cut."""


def load_cli_settings() -> Settings:
    """Settings from the environment, or exit 2 naming the bad variables."""
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[bold red]configuration error[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; returns the exit to raise."""
    err.print(f"[bold red]error[/]: {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
