"""``tradestream dlq``: list, show and replay dead letters."""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
import typer
from rich.table import Table

from core.streaming.dead_letters import (
    DeadLetterRecord,
    ReplayRefusedError,
    check_replay,
    read_dead_letters,
    replay_dead_letters,
    replay_target,
    select_dead_letters,
)
from core.streaming.errors import BrokerUnavailableError, ConnectionSetupError
from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.topic_reader import topic_exists
from services.cli.common import WIDE_COLUMNS, console, fail, load_cli_settings

dlq_app = typer.Typer(help="Inspect and replay dead letters.", no_args_is_help=True)

PositionOption = Annotated[
    list[str] | None,
    typer.Option("--position", "-p", help="Select partition:offset in the dead-letter topic."),
]
ErrorTypeOption = Annotated[
    str | None, typer.Option(help="Select by exception type (substring, case-insensitive).")
]
WideOption = Annotated[
    bool, typer.Option("--wide", help="Never cut a column, whatever the terminal width.")
]


def _load(topic: str) -> list[DeadLetterRecord]:
    settings = load_cli_settings()

    async def load() -> list[DeadLetterRecord]:
        # Connecting through the connection manager first turns a wrong password,
        # certificate or protocol into one clear error instead of a traceback.
        manager = ConnectionManager(settings, use_redis=False)
        await manager.start()
        await manager.stop()
        if not await topic_exists(settings.redpanda, topic):
            raise LookupError(topic)
        return await read_dead_letters(settings.redpanda, topic)

    try:
        return asyncio.run(load())
    except LookupError:
        raise fail(f"topic {topic} does not exist") from None
    except ConnectionSetupError as exc:
        raise fail(str(exc)) from None
    except (BrokerUnavailableError, OSError, TimeoutError) as exc:
        raise fail(f"cannot read {topic}: {type(exc).__name__}: {exc}") from None


def _table(records: list[DeadLetterRecord], title: str) -> Table:
    table = Table(title=title)
    for name in ("position", "original", "error", "message", "attempts", "failed at", "replayed"):
        table.add_column(name, overflow="fold")
    for r in records:
        replayed = f"{r.replayed.replayed_at} -> {r.replayed.target}" if r.replayed else ""
        table.add_row(
            r.position,
            r.original_location,
            r.error_type.rsplit(".", 1)[-1],
            r.error_message[:60],
            r.attempts,
            r.failed_at,
            replayed,
            style="dim" if r.replayed else None,
        )
    return table


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. paper.signals.raw.dlq.")],
    error_type: ErrorTypeOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.", min=1)] = 50,
    wide: WideOption = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per dead letter, nothing cut.")
    ] = False,
) -> None:
    """List dead letters: where they came from, why, when, and whether they were replayed."""
    records = select_dead_letters(_load(topic), error_type=error_type)
    if as_json:
        for record in records[:limit]:
            typer.echo(orjson.dumps(record.as_dict()).decode())
        return
    replayed = sum(1 for r in records if r.replayed)
    title = f"{topic}: {len(records)} dead letters ({replayed} replayed)"
    console.print(_table(records[:limit], title), width=WIDE_COLUMNS if wide else None)


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic.")],
    position: Annotated[str, typer.Argument(help="partition:offset of the dead letter.")],
    wide: WideOption = False,
) -> None:
    """Show one dead letter: every header decoded and the payload (safely, even if binary)."""
    found = select_dead_letters(_load(topic), positions=[position])
    if not found:
        raise fail(f"no dead letter at {position} in {topic}")
    record = found[0]
    headers = Table(title=f"{topic} {position}")
    headers.add_column("header", overflow="fold")
    headers.add_column("value", overflow="fold")
    for key, value in record.shown_headers():
        headers.add_row(key, value if key != "dlq.exception.traceback" else value[-1500:])
    width = WIDE_COLUMNS if wide else None
    console.print(headers, width=width)
    if record.replayed is not None:
        console.print(
            f"[bold]replayed[/]: {record.replayed.replayed_at} -> {record.replayed.target}"
        )
    console.print(f"[bold]key[/]: {record.key!r}", markup=True, highlight=False)
    console.print("[bold]payload[/]:")
    console.print(record.payload_text(), markup=False, highlight=False, width=width)


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic.")],
    position: PositionOption = None,
    error_type: ErrorTypeOption = None,
    all_records: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter of the topic.")
    ] = False,
    to: Annotated[
        str | None,
        typer.Option(help="Target topic (default: the dead-letter topic minus its suffix)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replay records that were already replayed.")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Show what would be replayed; send nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Send selected dead letters back to the topic they belong to, bytes untouched.

    The target is the dead-letter topic's name minus the dead-letter suffix
    (TRADESTREAM_RELIABILITY__DEAD_LETTER_SUFFIX), or --to. A record whose
    dlq.original.topic header names another topic is refused, and so is a record
    replayed before, unless --force. Select with --position (repeatable),
    --error-type, or --all; it shows what it will send and asks unless --yes.
    """
    if not (position or error_type or all_records):
        raise fail("select what to replay: --position, --error-type or --all", 2)
    settings = load_cli_settings()
    try:
        target = replay_target(topic, settings.reliability.dead_letter_suffix, to)
    except ReplayRefusedError as exc:
        raise fail(str(exc), 2) from None
    records = select_dead_letters(_load(topic), positions=position or (), error_type=error_type)
    if not records:
        raise fail("nothing matches the selection")
    console.print(_table(records, f"to replay from {topic} to {target}: {len(records)}"))
    try:
        check_replay(records, target, explicit=to is not None, force=force)
    except ReplayRefusedError as exc:
        raise fail(str(exc)) from None
    if dry_run:
        console.print("dry run: nothing sent")
        return
    question = f"Send {len(records)} record(s) to {target}?"
    if not yes and not typer.confirm(question, default=False):
        raise fail("not confirmed: nothing sent")
    try:
        results = asyncio.run(
            replay_dead_letters(
                settings.redpanda,
                records,
                target=target,
                explicit_target=to is not None,
                force=force,
            )
        )
    except ReplayRefusedError as exc:
        raise fail(str(exc)) from None
    for result in results:
        note = "" if result.marked else " (replay mark not written)"
        console.print(f"replayed {result.record.position} -> {result.target}{note}")
