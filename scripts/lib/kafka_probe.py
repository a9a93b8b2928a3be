"""Exit 0 when a Kafka cluster answers and reports at least N live brokers.

    python kafka_probe.py BOOTSTRAP [N]

Used by scripts/kafka-cluster.sh and scripts/secure.sh to wait for readiness.
SASL/TLS come from PROBE_SECURITY_PROTOCOL, PROBE_SASL_MECHANISM,
PROBE_SASL_USERNAME, PROBE_SASL_PASSWORD and PROBE_SSL_CAFILE.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context


def _security() -> dict[str, Any]:
    protocol = os.environ.get("PROBE_SECURITY_PROTOCOL", "PLAINTEXT")
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(cafile=os.environ.get("PROBE_SSL_CAFILE"))
    if protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = os.environ.get("PROBE_SASL_MECHANISM", "SCRAM-SHA-512")
        kwargs["sasl_plain_username"] = os.environ["PROBE_SASL_USERNAME"]
        kwargs["sasl_plain_password"] = os.environ["PROBE_SASL_PASSWORD"]
    return kwargs


async def main(bootstrap: str, want: int) -> int:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap.split(","), request_timeout_ms=5000, **_security()
    )
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = cluster.get("brokers") or []
        return 0 if len(brokers) >= want and cluster.get("controller_id", -1) >= 0 else 1
    finally:
        await admin.close()


if __name__ == "__main__":
    try:
        code = asyncio.run(
            asyncio.wait_for(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1), 12)
        )
    except Exception:
        code = 1
    sys.exit(code)
