"""``tradestream topic tail``: the last records of a topic, decoded, and optionally follow it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer

from core.config.settings import RedpandaSettings
from core.streaming.errors import BrokerUnavailableError
from core.streaming.topic_reader import follow_topic, read_topics, topic_exists
from core.streaming.types import FetchedRecord
from services.cli.common import console, fail, load_cli_settings
from services.common.envelopes import envelope_problem

topic_app = typer.Typer(help="Read topics.", no_args_is_help=True)

MAX_DATA_CHARS = 160


def record_view(record: FetchedRecord) -> dict[str, Any]:
    """A record as a JSON-ready dict: where it is, its key and its decoded value."""
    when = datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="milliseconds")
    view: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": when,
        "key": None if record.key is None else record.key.decode("utf-8", "replace"),
    }
    try:
        value = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        view["raw"] = repr(record.value)
        view["problem"] = "not JSON"
        return view
    view["value"] = value
    if not isinstance(value, dict):
        view["problem"] = "not a JSON object"
    else:
        problem = envelope_problem(value)
        if problem is not None:
            view["problem"] = f"not an envelope: {problem}"
    return view


def _line(view: dict[str, Any], full: bool) -> str:
    where = f"{view['partition']}:{view['offset']}"
    head = f"{view['timestamp']}  {where:>9}  key={view['key']}"
    if "raw" in view:
        return f"{head}  [{view['problem']}] {view['raw']}"
    value = view["value"]
    if "problem" in view:
        body = orjson.dumps(value).decode()
        return f"{head}  [{view['problem']}] {body if full else body[:MAX_DATA_CHARS]}"
    data = orjson.dumps(value.get("data")).decode()
    if not full and len(data) > MAX_DATA_CHARS:
        data = data[:MAX_DATA_CHARS] + "..."
    causation = value.get("causation_id") or "-"
    return f"{head}  {value['type']}  id={value['id']}  caused-by={causation}  {data}"


def _print(records: Sequence[FetchedRecord], as_json: bool, full: bool) -> None:
    for record in records:
        view = record_view(record)
        if as_json:
            typer.echo(orjson.dumps(view).decode())
        else:
            console.print(_line(view, full), markup=False, highlight=False, soft_wrap=True)


async def _follow(
    config: RedpandaSettings, topic: str, lines: int, as_json: bool, full: bool
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    stream = follow_topic(config, topic, tail=lines)
    try:
        while not stop.is_set():
            nxt = asyncio.ensure_future(anext(stream))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                break
            _print(nxt.result(), as_json, full)
    finally:
        await stream.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


@topic_app.command("tail")
def topic_tail(
    topic: Annotated[str, typer.Argument(help="Topic to read, e.g. paper.executions.")],
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="Last records to show (per partition).", min=0)
    ] = 10,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records until Ctrl-C.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per record.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Do not shorten payloads.")] = False,
) -> None:
    """Decoded envelopes of a topic: time, partition:offset, key, type, ids and payload.

    Values that are not envelopes are shown as they are, marked. Reads with a
    throwaway consumer group and commits nothing.
    """
    settings = load_cli_settings()
    config = settings.redpanda

    async def run() -> None:
        if not await topic_exists(config, topic):
            raise LookupError(topic)
        if follow:
            await _follow(config, topic, lines, as_json, full)
            return
        records = await read_topics(config, [topic], tail=lines)
        records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
        _print(records, as_json, full)

    try:
        asyncio.run(run())
    except LookupError:
        raise fail(f"topic {topic} does not exist") from None
    except (BrokerUnavailableError, OSError, TimeoutError) as exc:
        raise fail(f"cannot read {topic}: {type(exc).__name__}: {exc}") from None
