"""The ``tradestream`` command: run services, the demo, topics and dead letters.

Every command reads ``Settings`` from the environment (``TRADESTREAM_*``) and
``.env``; the defaults select the embedded in-memory broker and dedup store.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.config.settings import Settings, SettingsError, load_settings
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.dead_letters import (
    DeadLetterRecord,
    read_dead_letters,
    replay_dead_letters,
    select_dead_letters,
)
from core.streaming.errors import ConnectionSetupError
from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.logging_setup import configure_logging
from services.cli.runner import StartupFailedError, run_until_stopped
from services.registry import SERVICE_NAMES, build_pipeline, build_service

app = typer.Typer(
    name="tradestream",
    help="Reliable Kafka/Redpanda stream services: run the trading pipeline, its demo, "
    "and the tools around it.",
    no_args_is_help=True,
    add_completion=False,
)
topics_app = typer.Typer(help="Create the topics the services use.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect and replay dead letters.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")

console = Console()
err = Console(stderr=True)

ServiceName = StrEnum("ServiceName", {name: name for name in SERVICE_NAMES})  # type: ignore[misc]


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[bold red]configuration error[/]: {exc}")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error[/]: {message}")
    return typer.Exit(code)


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
    settings = _settings()
    obs = settings.observability
    configure_logging(obs.log_format, obs.log_level)
    try:
        code = asyncio.run(run_until_stopped([build_service(str(service.value), settings)]))
    except StartupFailedError as exc:
        raise _fail(f"{service.value} could not start: {exc}") from None
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

    settings = _settings()
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
        raise _fail(f"the pipeline could not start: {exc}") from None
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
    settings = _settings()
    names = service_topics(settings)

    async def ensure() -> list[str]:
        manager = ConnectionManager(settings, use_redis=False)
        await manager.start()
        try:
            return await manager.ensure_topics(names, partitions)
        finally:
            await manager.stop()

    try:
        created = asyncio.run(ensure())
    except ConnectionSetupError as exc:
        raise _fail(str(exc)) from None
    table = Table("topic", "state", title=f"topics on {settings.redpanda.bootstrap_servers}")
    for name in names:
        table.add_row(name, "[green]created[/]" if name in created else "exists")
    console.print(table)


# --------------------------------------------------------------------------- dlq


def _load_dead_letters(topic: str) -> list[DeadLetterRecord]:
    settings = _settings()

    async def load() -> list[DeadLetterRecord]:
        # Connect once through the connection manager first: a wrong password or
        # certificate then fails at once with its cause, not as a traceback.
        manager = ConnectionManager(settings, use_redis=False)
        await manager.start()
        await manager.stop()
        return await read_dead_letters(settings.redpanda, topic)

    try:
        return asyncio.run(load())
    except ConnectionSetupError as exc:
        raise _fail(str(exc)) from None


def _dead_letter_table(records: list[DeadLetterRecord], title: str) -> Table:
    table = Table("position", "original", "error", "message", "attempts", "failed at", title=title)
    for r in records:
        table.add_row(
            r.position,
            r.original_location,
            r.error_type.rsplit(".", 1)[-1],
            r.error_message[:60],
            r.attempts,
            r.failed_at,
        )
    return table


PositionOption = Annotated[
    list[str] | None,
    typer.Option("--position", "-p", help="Select partition:offset in the dead-letter topic."),
]
ErrorTypeOption = Annotated[
    str | None, typer.Option(help="Select by exception type (substring, case-insensitive).")
]


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. paper.signals.raw.dlq.")],
    error_type: ErrorTypeOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.", min=1)] = 50,
) -> None:
    """List dead letters: where they came from, why, and when."""
    records = select_dead_letters(_load_dead_letters(topic), error_type=error_type)
    console.print(_dead_letter_table(records[:limit], f"{topic}: {len(records)} dead letters"))


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic.")],
    position: Annotated[str, typer.Argument(help="partition:offset of the dead letter.")],
) -> None:
    """Show one dead letter: every header decoded and the payload (safely, even if binary)."""
    found = select_dead_letters(_load_dead_letters(topic), positions=[position])
    if not found:
        raise _fail(f"no dead letter at {position} in {topic}")
    record = found[0]
    headers = Table("header", "value", title=f"{topic} {position}")
    for key, value in record.decoded_headers().items():
        headers.add_row(key, value if key != "dlq.exception.traceback" else value[-1500:])
    console.print(headers)
    console.print(f"[bold]key[/]: {record.key!r}")
    console.print("[bold]payload[/]:")
    console.print(record.payload_text(), markup=False, highlight=False)


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic.")],
    position: PositionOption = None,
    error_type: ErrorTypeOption = None,
    all_records: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter of the topic.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Show what would be replayed; send nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Send selected dead letters back to their original topic, bytes untouched.

    Select with --position (repeatable), --error-type, or --all. Replayed records
    stay in the dead-letter topic (Kafka topics are append-only); replaying one
    twice delivers it twice, and dedup then skips the second copy once the first
    was handled.
    """
    if not (position or error_type or all_records):
        raise _fail("select what to replay: --position, --error-type or --all", 2)
    settings = _settings()
    records = select_dead_letters(
        _load_dead_letters(topic), positions=position or (), error_type=error_type
    )
    if not records:
        raise _fail("nothing matches the selection")
    console.print(_dead_letter_table(records, f"to replay from {topic}: {len(records)}"))
    if dry_run:
        console.print("dry run: nothing sent")
        return
    if not yes and not typer.confirm(f"Replay {len(records)} record(s)?", default=False):
        raise typer.Exit(1)
    acks = asyncio.run(replay_dead_letters(settings.redpanda, records))
    for record, ack in zip(records, acks, strict=True):
        console.print(f"replayed {record.position} -> {ack.topic}[{ack.partition}]@{ack.offset}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
