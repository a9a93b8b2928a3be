"""The ``tradestream`` command: run services, the demo, and the tools around them.

Every command reads ``Settings`` from the environment (``TRADESTREAM_*``) and
``.env``; the defaults select the embedded in-memory broker and dedup store.
"""

from __future__ import annotations

import asyncio
import platform
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from rich.table import Table

from core.config.settings import Settings
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.errors import ConnectionSetupError
from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.logging_setup import configure_logging
from services.cli.common import console, fail, load_cli_settings
from services.cli.dlq import dlq_app
from services.cli.ledger_views import orders_app, positions
from services.cli.runner import StartupFailedError, run_until_stopped
from services.cli.tail import topic_app
from services.registry import SERVICE_NAMES, build_pipeline, build_service
from services.trading_engine.engine_state import routed_namespaces
from services.trading_engine.restore import ledger_topic_specs

app = typer.Typer(
    name="tradestream",
    help="Reliable Kafka/Redpanda stream services: run the trading pipeline, its demo, "
    "and the tools around it.",
    no_args_is_help=True,
    add_completion=False,
)
topics_app = typer.Typer(help="Create the topics the services use.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(topic_app, name="topic")
app.add_typer(dlq_app, name="dlq")
app.add_typer(orders_app, name="orders")
app.command("positions")(positions)

ServiceName = StrEnum("ServiceName", {name: name for name in SERVICE_NAMES})  # type: ignore[misc]


def package_version() -> str:
    """The installed version of tradestream (``unknown`` when not installed)."""
    try:
        return version("tradestream")
    except PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        console.print(
            f"tradestream {package_version()} (Python {platform.python_version()})",
            highlight=False,
        )
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Reliable Kafka/Redpanda stream services: the trading pipeline and its tools."""


# --------------------------------------------------------------------------- run


@app.command()
def run(
    service: Annotated[ServiceName, typer.Argument(help="Which service to run.")],
) -> None:
    """Run one service against the broker and Redis from settings, until SIGTERM/SIGINT.

    Exits 0 after a graceful stop, 1 when the service cannot start (the message
    says what is unreachable), non-zero when it turned unhealthy and is set to
    exit (TRADESTREAM_RELIABILITY__EXIT_ON_UNHEALTHY=true).
    """
    settings = load_cli_settings()
    obs = settings.observability
    configure_logging(obs.log_format, obs.log_level)
    try:
        code = asyncio.run(run_until_stopped([build_service(str(service.value), settings)]))
    except StartupFailedError as exc:
        raise fail(f"{service.value} could not start: {exc}") from None
    raise typer.Exit(code)


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option(help="Seconds to run; 0 runs until Ctrl-C.", min=0)
    ] = 30.0,
    rate: Annotated[float, typer.Option(help="Market ticks per second.", min=0.1)] = 50.0,
    live: Annotated[
        bool, typer.Option(help="Refresh a live view in place (off: one summary at the end).")
    ] = True,
    chaos: Annotated[
        bool,
        typer.Option(help="Inject duplicate deliveries, invalid signals and garbage bytes."),
    ] = True,
) -> None:
    """Run the whole pipeline in one process: feed, strategies, validator, trading engine.

    With default settings everything runs on the embedded broker and dedup store,
    no servers needed. With TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS and
    TRADESTREAM_REDIS__URL set it runs on real infrastructure. Ctrl-C stops
    gracefully and prints the summary.
    """
    from services.cli.demo import run_demo

    settings = load_cli_settings()
    configure_logging("console", "ERROR" if live else "WARNING")
    try:
        code = asyncio.run(
            run_demo(
                settings,
                duration_s=duration,
                tick_rate=rate,
                live=live,
                chaos=chaos,
                console=console,
            )
        )
    except StartupFailedError as exc:
        raise fail(f"the pipeline could not start: {exc}") from None
    raise typer.Exit(code)


# --------------------------------------------------------------------------- topics


def service_topics(settings: Settings) -> list[str]:
    """Every topic the four services consume, produce or dead-letter to."""
    topics: list[str] = [*TopicNames.all()]
    namespaces = {settings.broker_namespace}
    for targets in settings.trading.strategy_routes.values():
        namespaces.update(targets)
    for namespace in sorted(namespaces):
        topics.extend(TopicMap(namespace).all())
    for service in build_pipeline(settings):
        topics.extend(service.orchestrator.startup_topics)
    return list(dict.fromkeys(topics))


@topics_app.command("ensure")
def topics_ensure(
    partitions: Annotated[
        int | None, typer.Option(help="Partitions per new topic (default from settings).", min=1)
    ] = None,
) -> None:
    """Create every topic the services use (existing topics are left as they are)."""
    settings = load_cli_settings()
    ledger = ledger_topic_specs(settings, routed_namespaces(settings), partitions)
    names = service_topics(settings)
    names += [spec.name for spec in ledger if spec.name not in names]

    async def ensure() -> list[str]:
        manager = ConnectionManager(settings, use_redis=False)
        await manager.start()
        try:
            created = await manager.admin.create_topics(ledger)
            return created + await manager.ensure_topics(names, partitions)
        finally:
            await manager.stop()

    try:
        created = asyncio.run(ensure())
    except ConnectionSetupError as exc:
        raise fail(str(exc)) from None
    table = Table("topic", "state", title=f"topics on {settings.redpanda.bootstrap_servers}")
    for name in names:
        table.add_row(name, "[green]created[/]" if name in created else "exists")
    console.print(table)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
