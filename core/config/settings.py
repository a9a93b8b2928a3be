"""Typed settings for every service, read from environment variables and `.env`.

Variables use the prefix ``TRADESTREAM_`` and ``__`` between nested levels, for
example ``TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS=broker:9092`` or
``TRADESTREAM_RELIABILITY__DEDUP_ENABLED=false``. Per-service overrides of the
reliability switches live under ``TRADESTREAM_SERVICES__<service>__<field>``.
Use :func:`load_settings` at start-up: it turns validation failures into one
:class:`SettingsError` that names each offending variable and never echoes a value.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.config.redis_settings import RedisSettings as RedisSettings

ENV_PREFIX = "TRADESTREAM_"
ENV_NESTED_DELIMITER = "__"
MEMORY_URL = "memory://"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
CompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]
DedupFailurePolicy = Literal["fail_open", "fail_closed"]
OrderingMode = Literal["partition", "key", "unordered"]
ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
LogFormat = Literal["json", "console"]
ServiceShape = Literal["legacy", "builder"]

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")


class SettingsError(ValueError):
    """Raised when configuration is invalid; the message names the variables."""


class RedpandaSettings(BaseModel):
    """How to reach Kafka/Redpanda. ``memory://`` selects the embedded broker."""

    bootstrap_servers: str = MEMORY_URL
    client_id: str = "tradestream"
    group_id_prefix: str = "tradestream"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    request_timeout_ms: int = Field(default=30_000, gt=0)
    fetch_max_wait_ms: int = Field(default=50, ge=0)
    compression_type: CompressionType = "none"
    connect_timeout_s: float = Field(default=30.0, gt=0)
    topic_partitions: int = Field(default=3, gt=0)
    topic_replication_factor: int = Field(default=1, gt=0)
    embedded_retention_records: int | None = Field(default=100_000, gt=0)
    session_timeout_ms: int = Field(default=10_000, gt=0)
    heartbeat_interval_ms: int = Field(default=3_000, gt=0)
    max_poll_interval_ms: int = Field(default=300_000, gt=0)
    rebalance_timeout_ms: int = Field(default=30_000, gt=0)

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        value = value.strip()
        if value.startswith(MEMORY_URL):
            return value
        hosts = [h.strip() for h in value.split(",")]
        bad = [
            h for h in hosts if not _HOST_PORT.match(h) or not 0 < int(h.rsplit(":", 1)[1]) < 65536
        ]
        if not hosts or bad:
            raise ValueError(
                "expected a comma-separated list of host:port (or memory://), "
                f"{len(bad) or 1} entr{'y' if len(bad) <= 1 else 'ies'} unparseable"
            )
        return ",".join(hosts)

    @model_validator(mode="after")
    def _check_sasl(self) -> RedpandaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                name
                for name, val in (
                    ("sasl_mechanism", self.sasl_mechanism),
                    ("sasl_username", self.sasl_username),
                    ("sasl_password", self.sasl_password),
                )
                if not val
            ]
            if missing:
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs {', '.join(missing)}"
                )
        return self

    @model_validator(mode="after")
    def _check_group_timeouts(self) -> RedpandaSettings:
        # A member heartbeats several times per session, and neither a slow poll nor a
        # rebalance may be cut shorter than a member's session.
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be at most a "
                f"third of session_timeout_ms ({self.session_timeout_ms})"
            )
        for name in ("max_poll_interval_ms", "rebalance_timeout_ms"):
            if getattr(self, name) < self.session_timeout_ms:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must not be below session_timeout_ms "
                    f"({self.session_timeout_ms})"
                )
        return self

    @property
    def is_embedded(self) -> bool:
        """True when the in-memory broker is selected."""
        return self.bootstrap_servers.startswith(MEMORY_URL)

    @property
    def bootstrap_list(self) -> list[str]:
        """Bootstrap servers as a list."""
        return self.bootstrap_servers.split(",")


class ReliabilitySettings(BaseModel):
    """Feature switches and tuning of the reliability path, per service if overridden."""

    dedup_enabled: bool = True
    dedup_ttl_seconds: int = Field(default=3600, gt=0)
    dedup_processing_ttl_ms: int = Field(default=60_000, gt=0)
    dedup_failure_policy: DedupFailurePolicy = "fail_open"
    dedup_local_cache_size: int = Field(default=10_000, ge=0)
    retry_max_attempts: int = Field(default=3, ge=1)
    retry_backoff_initial_ms: int = Field(default=100, ge=0)
    retry_backoff_max_ms: int = Field(default=5_000, ge=0)
    dead_letter_enabled: bool = True
    dead_letter_suffix: str = ".dlq"
    metrics_enabled: bool = True
    commit_interval_ms: int = Field(default=1_000, gt=0)
    commit_every: int = Field(default=10_000, gt=0)
    ordering: OrderingMode = "partition"
    default_concurrency: int = Field(default=1, ge=1)
    max_in_flight: int = Field(default=1_000, ge=1)
    max_in_flight_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    drain_timeout_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(default=10.0, gt=0)
    revocation_timeout_s: float = Field(default=5.0, gt=0)
    handler_timeout_s: float | None = Field(default=None, gt=0)
    max_loop_restarts: int = Field(default=5, ge=0)
    exit_on_unhealthy: bool = False
    shape: ServiceShape = Field(
        default="legacy",
        description="which implementation core.streaming.legacy.build_selected builds: "
        "'legacy' (the StreamProcessor subclass) or 'builder' (the builder-made service)",
    )
    processing_guarantee: ProcessingGuarantee = "at_least_once"
    transaction_timeout_ms: int = Field(default=60_000, gt=0)
    retry_topics: Annotated[list[float], NoDecode] = Field(default_factory=list)

    @field_validator("retry_topics", mode="before")
    @classmethod
    def _parse_delays(cls, value: Any) -> Any:
        # From the environment: "[1, 10, 60]" or "1,10,60" (seconds).
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",")]
        return value

    @field_validator("retry_topics")
    @classmethod
    def _positive_delays(cls, value: list[float]) -> list[float]:
        if any(delay <= 0 for delay in value):
            raise ValueError("every retry topic delay must be positive (seconds)")
        return value


class ObservabilitySettings(BaseModel):
    """Logs and the ops HTTP endpoint."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    log_format: LogFormat = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    http_enabled: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9100, ge=0, lt=65536)


class TradingSettings(BaseModel):
    """Settings of the trading services (ignored by the streaming framework)."""

    strategy_routes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="strategy id -> namespaces it trades on; unlisted strategies "
        "trade on broker_namespace",
    )
    instruments: dict[str, int] = Field(
        default_factory=lambda: {
            "RELIANCE": 738561,
            "TCS": 2953217,
            "INFY": 408065,
            "HDFCBANK": 341249,
            "ICICIBANK": 1270529,
        },
        description="symbol -> instrument token of the tradable universe",
    )
    market_holidays: list[date] = Field(default_factory=list)
    market_always_open: bool = False
    slippage_bps: float = Field(default=5.0, ge=0)
    max_quantity: int = Field(default=10_000, gt=0)
    max_notional: float = Field(default=5_000_000.0, gt=0)
    max_price_age_s: float = Field(default=60.0, gt=0)
    starting_cash: float = Field(default=10_000_000.0, ge=0)
    tick_rate_per_s: float = Field(default=20.0, gt=0)
    price_band_pct: float = Field(
        default=20.0,
        gt=0,
        description="the engine rejects a LIMIT price further than this from the last price",
    )
    resting_order_ttl_s: float = Field(
        default=3600.0, gt=0, description="a resting LIMIT order is cancelled after this long"
    )
    max_resting_orders: int = Field(
        default=1_000, gt=0, description="resting orders per namespace; beyond, LIMITs are rejected"
    )
    remembered_ids: int = Field(
        default=20_000,
        gt=0,
        description="recent signal and order ids each service keeps to recognise repeats",
    )
    warmup_ticks: int = Field(
        default=2_000,
        ge=0,
        description="ticks per partition read back at start for prices and strategy state",
    )
    restore_on_start: bool = Field(
        default=True, description="services rebuild their state from their topics at start"
    )
    snapshot_every: int = Field(
        default=10_000,
        ge=0,
        description="ledger events between two book snapshots of a namespace; 0: none",
    )


class Settings(BaseSettings):
    """Everything a service reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    broker_namespace: str = "paper"
    redpanda: RedpandaSettings = Field(default_factory=RedpandaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    reliability: ReliabilitySettings = Field(default_factory=ReliabilitySettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    trading: TradingSettings = Field(default_factory=TradingSettings)
    services: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_overrides(self) -> Settings:
        problems: list[str] = []
        for name, overrides in self.services.items():
            prefix = f"{ENV_PREFIX}SERVICES{ENV_NESTED_DELIMITER}{name}{ENV_NESTED_DELIMITER}"
            unknown = sorted(set(overrides) - set(ReliabilitySettings.model_fields))
            problems.extend(
                f"{prefix}{field.upper()}: unknown reliability field" for field in unknown
            )
            if unknown:
                continue
            try:
                merged = ReliabilitySettings.model_validate(
                    self.reliability.model_dump() | overrides
                )
            except ValidationError as exc:
                for err in exc.errors(include_input=False, include_url=False):
                    field = ENV_NESTED_DELIMITER.join(str(p) for p in err["loc"]).upper()
                    problems.append(f"{prefix}{field}: {err['msg']}")
                continue
            problems.extend(self._revocation_problems(merged, f"{prefix}REVOCATION_TIMEOUT_S"))
        base = f"{ENV_PREFIX}RELIABILITY{ENV_NESTED_DELIMITER}REVOCATION_TIMEOUT_S"
        problems.extend(self._revocation_problems(self.reliability, base))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _revocation_problems(self, rel: ReliabilitySettings, variable: str) -> list[str]:
        """The revocation wait must end well before the group gives up on the member."""
        limit_s = self.redpanda.rebalance_timeout_ms / 2000
        if rel.revocation_timeout_s <= limit_s:
            return []
        return [
            f"{variable}: {rel.revocation_timeout_s:g} s must be at most half of "
            f"{ENV_PREFIX}REDPANDA{ENV_NESTED_DELIMITER}REBALANCE_TIMEOUT_MS "
            f"({self.redpanda.rebalance_timeout_ms} ms), so finished messages are committed "
            "before the group moves on"
        ]

    def _overrides_of(self, service_name: str) -> dict[str, Any]:
        wanted = _service_key(service_name)
        for name, overrides in self.services.items():
            if _service_key(name) == wanted:
                return overrides
        return {}

    def reliability_fields_set(self, service_name: str) -> set[str]:
        """Reliability fields given explicitly (for all services, or for this one)."""
        return set(self.reliability.model_fields_set) | set(self._overrides_of(service_name))

    def reliability_for(self, service_name: str) -> ReliabilitySettings:
        """The reliability settings of one service: defaults plus its overrides.

        Service names match case-insensitively, with ``-`` and ``_`` alike.
        """
        overrides = self._overrides_of(service_name)
        if not overrides:
            return self.reliability
        return ReliabilitySettings.model_validate(self.reliability.model_dump() | overrides)


def _service_key(name: str) -> str:
    return name.lower().replace("-", "_")


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable that sets the field at ``loc``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in loc).upper()


def load_settings(**overrides: Any) -> Settings:
    """Read settings, raising :class:`SettingsError` with variable names on bad values."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = tuple(p for p in err["loc"] if p != "__root__")
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{env_name(loc)}: {msg}" if loc else msg)
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
