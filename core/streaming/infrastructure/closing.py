"""Closing a broker client without letting an unreachable broker hold up shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

logger = logging.getLogger(__name__)


async def bounded_close(closing: Awaitable[None], timeout_s: float, what: str) -> None:
    """Await a client's close for at most ``timeout_s``; a broker that is away is no error.

    Only a cancellation of the calling task itself is passed on.
    """
    try:
        await asyncio.wait_for(closing, timeout_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        logger.error("%s: close was cut short", what)
    except TimeoutError:
        logger.error("%s did not close within %s s", what, timeout_s)
    except Exception as exc:
        logger.error("%s: close failed: %s: %s", what, type(exc).__name__, exc)


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task was asked to stop.

    redis-py's asyncio client (8.x) can swallow a cancellation that arrives during
    a command, so loops that talk to Redis check this after each call: a
    cancelled lane, claim or renewal loop must end, not carry on.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
