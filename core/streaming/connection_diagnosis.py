"""Why a connection to Kafka or Redis failed, and whether waiting can fix it.

Start-up retries only what time can fix (a refused or reset connection, a
timeout). A wrong password, a certificate that does not verify, a missing file
or a client speaking plaintext to a TLS port fails the same way on every
attempt: those end at once, with the cause named (never the secret).

aiokafka hides the cause of a failed bootstrap behind "Unable to bootstrap
from ..." (it only logs it), so for Kafka the cause is found by opening one
connection per bootstrap server with the same settings. A plaintext client on a
TLS port and a TLS client on a plaintext port both look like a closed
connection; a second probe tells them apart from a broker that is merely down.

The client libraries' error classes and the Kafka probe come from the
adapters (``core.streaming.kafka.diagnosis``, ``core.streaming.redis_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from core.config.settings import RedisSettings, RedpandaSettings
from core.streaming.kafka.diagnosis import KAFKA_AUTH_ERRORS, KAFKA_DENIED_ERRORS, connect_error
from core.streaming.logging_setup import redact
from core.streaming.redis_client import REDIS_AUTH_ERRORS

_PROBE_TIMEOUT_S = 3.0

_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass(frozen=True)
class Diagnosis:
    """What went wrong, in one line without secrets, and whether retrying can help."""

    permanent: bool
    reason: str


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _text(exc: BaseException) -> str:
    name = type(exc).__name__
    detail = str(exc).strip()
    if not detail:
        return name
    return redact(detail if name in detail else f"{name}: {detail}")


def classify(exc: BaseException, *, tls_hint: str = "the CA file setting") -> Diagnosis:
    """Diagnose ``exc`` (and its causes) without touching the network."""
    for err in _chain(exc):
        if isinstance(err, (*KAFKA_AUTH_ERRORS, *REDIS_AUTH_ERRORS)):
            return Diagnosis(True, f"authentication failed ({_text(err)})")
        if isinstance(err, KAFKA_DENIED_ERRORS):
            return Diagnosis(True, f"not authorized ({_text(err)})")
        if isinstance(err, ssl.SSLCertVerificationError):
            reason = err.verify_message or str(err)
            return Diagnosis(
                True,
                f"TLS certificate verification failed ({redact(reason)}); "
                f"check {tls_hint} and the server's certificate",
            )
        if isinstance(err, ssl.SSLError) and not isinstance(err, ssl.SSLEOFError):
            return Diagnosis(True, f"TLS handshake failed ({_text(err)})")
        if isinstance(err, _FILE_ERRORS):
            where = f" {err.filename}" if getattr(err, "filename", None) else ""
            return Diagnosis(True, f"cannot read file{where} ({type(err).__name__})")
    return Diagnosis(False, _text(_root(exc)))


def _root(exc: BaseException) -> BaseException:
    """The most specific cause in the chain (the deepest one)."""
    last = exc
    for err in _chain(exc):
        last = err
    return last


def check_files(files: dict[str, str], env_prefix: str) -> Diagnosis | None:
    """A permanent diagnosis naming the first configured file that cannot be read."""
    for name, path in files.items():
        variable = f"{env_prefix}{name.upper()}"
        if not os.path.exists(path):
            return Diagnosis(True, f"{variable} names a file that does not exist: {path}")
        if not os.path.isfile(path):
            return Diagnosis(True, f"{variable} is not a regular file: {path}")
        if not os.access(path, os.R_OK):
            return Diagnosis(True, f"{variable} names a file this process cannot read: {path}")
    return None


# --------------------------------------------------------------------------- probes


async def speaks_tls(host: str, port: int, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """True when ``host:port`` completes a TLS handshake (certificate not checked)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), timeout_s
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1)
    return True


async def speaks_plain_redis(host: str, port: int, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """True when ``host:port`` answers a plaintext Redis ``PING`` (even with an error)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.read(1), timeout_s)
        return first in (b"+", b"-")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def diagnose_kafka(cfg: RedpandaSettings, exc: BaseException) -> Diagnosis:
    """Why the broker connection failed: from ``exc``, or by probing each server."""
    hint = "TRADESTREAM_REDPANDA__SSL_CAFILE"
    found = classify(exc, tls_hint=hint)
    if found.permanent:
        return found
    transient: Diagnosis | None = None
    for address in cfg.bootstrap_list:
        host, port = _host_port(address)
        try:
            error = await connect_error(host, port, cfg, _PROBE_TIMEOUT_S)
        except _FILE_ERRORS as file_error:
            return classify(file_error)
        if error is None:
            continue
        found = classify(error, tls_hint=hint)
        if found.permanent:
            return Diagnosis(True, f"{address}: {found.reason}")
        if isinstance(_root(error), (ConnectionRefusedError, TimeoutError)):
            transient = transient or Diagnosis(False, f"{address}: {found.reason}")
            continue
        # Connected, then closed or reset: perhaps a protocol mismatch.
        uses_tls = cfg.security_protocol in ("SSL", "SASL_SSL")
        if not uses_tls and await speaks_tls(host, port):
            return Diagnosis(
                True,
                f"{address} expects TLS, but SECURITY_PROTOCOL is {cfg.security_protocol} "
                "(use SSL or SASL_SSL)",
            )
        if uses_tls and await connect_error(host, port, None, _PROBE_TIMEOUT_S) is None:
            return Diagnosis(
                True,
                f"{address} is a plaintext listener, but SECURITY_PROTOCOL is "
                f"{cfg.security_protocol} (use PLAINTEXT or SASL_PLAINTEXT, or the TLS port)",
            )
        transient = transient or Diagnosis(False, f"{address}: {found.reason}")
    return transient or found


async def diagnose_redis(settings: RedisSettings, exc: BaseException) -> Diagnosis:
    """Why the Redis connection failed; tells a TLS/plaintext mismatch from an outage."""
    found = classify(exc, tls_hint="TRADESTREAM_REDIS__SSL_CAFILE")
    if found.permanent or settings.is_embedded or settings.client_url.startswith("unix"):
        return found
    address = settings.safe_address
    try:
        host, port = _host_port(address if ":" in address else f"{address}:6379")
    except ValueError:
        return found
    root = _root(exc)
    if isinstance(root, ConnectionRefusedError):
        return found
    if not settings.uses_tls and await speaks_tls(host, port):
        return Diagnosis(True, f"{address} expects TLS: use a rediss:// URL")
    if settings.uses_tls and await speaks_plain_redis(host, port):
        return Diagnosis(
            True, f"{address} does not speak TLS: use a redis:// URL or the server's TLS port"
        )
    return found
