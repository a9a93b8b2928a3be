"""How a service reaches Redis: the URL, timeouts, TLS files, and a cluster switch.

The URL is checked when settings load, so a typo fails at start-up with the
variable's name instead of surfacing later as a raw ``ValueError`` from the
client (a bad port) or silently doing the wrong thing (``/notadb`` read as
database 0). Messages never echo the URL: it may hold a password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

MEMORY_URL = "memory://"
_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
_NO_VERIFY = {"none", "cert_none", "optional_no"}


class RedisSettings(BaseModel):
    """How to reach Redis. ``memory://`` selects an in-process fake Redis.

    TLS (``rediss://``): ``ssl_cafile`` trusts a private CA, ``ssl_certfile`` and
    ``ssl_keyfile`` present a client certificate. ``ssl_verify=False`` (or
    ``ssl_cert_reqs=none`` in the URL) encrypts without checking who answers;
    the connection manager warns about it at start.

    Redis Cluster: a ``redis+cluster://`` or ``rediss+cluster://`` URL, or
    ``cluster=True`` with any seed node's URL. ``dedup_shards``: how many
    hash-tagged shards (hash slots) one flow's dedup records spread over; by
    default 1 on one node and 16 on a cluster. Every instance of a service must
    use the same count: ids are placed by it.
    """

    url: SecretStr = SecretStr(MEMORY_URL)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    socket_timeout_s: float = Field(default=2.0, gt=0)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_verify: bool = True
    cluster: bool = False
    dedup_shards: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        check_redis_url(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> RedisSettings:
        files = [
            name
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
            if getattr(self, name) is not None
        ]
        if files and not self.uses_tls:
            raise ValueError(
                f"{', '.join(files)} set, but the Redis URL is not rediss:// (TLS): "
                "the files would be ignored and the connection unencrypted"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (mutual TLS)")
        if self.is_cluster and _db_of(self.url.get_secret_value()) not in (None, 0):
            raise ValueError("Redis Cluster has only database 0")
        return self

    @property
    def is_embedded(self) -> bool:
        """True when the in-process fake Redis is selected."""
        return self.url.get_secret_value().startswith(MEMORY_URL)

    @property
    def is_cluster(self) -> bool:
        """True when a Redis Cluster is selected (by URL scheme or ``cluster``)."""
        return self.cluster or _scheme(self.url.get_secret_value()).endswith("+cluster")

    @property
    def dedup_shard_count(self) -> int:
        """``dedup_shards``, or its default: 16 on a Redis Cluster, else 1."""
        if self.dedup_shards is not None:
            return self.dedup_shards
        return 16 if self.is_cluster else 1

    @property
    def uses_tls(self) -> bool:
        """True for ``rediss://`` URLs."""
        return _scheme(self.url.get_secret_value()).startswith("rediss")

    @property
    def tls_verification_off(self) -> bool:
        """True when TLS is on but the server's certificate is not checked."""
        if not self.uses_tls:
            return False
        if not self.ssl_verify:
            return True
        query = parse_qs(urlsplit(self.url.get_secret_value()).query)
        reqs = [v.lower() for v in query.get("ssl_cert_reqs", [])]
        return any(v in _NO_VERIFY for v in reqs)

    @property
    def client_url(self) -> str:
        """The URL for redis-py: the ``+cluster`` suffix of the scheme removed."""
        raw = self.url.get_secret_value()
        scheme = _scheme(raw)
        if scheme.endswith("+cluster"):
            return scheme.removesuffix("+cluster") + raw[len(scheme) :]
        return raw

    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py keyword arguments for the TLS files and verification (empty without TLS)."""
        if not self.uses_tls:
            return {}
        kwargs: dict[str, Any] = {}
        if self.ssl_cafile:
            kwargs["ssl_ca_certs"] = self.ssl_cafile
        if self.ssl_certfile:
            kwargs["ssl_certfile"] = self.ssl_certfile
            kwargs["ssl_keyfile"] = self.ssl_keyfile
        if not self.ssl_verify:
            kwargs["ssl_cert_reqs"] = "none"
            kwargs["ssl_check_hostname"] = False
        return kwargs

    @property
    def tls_files(self) -> dict[str, str]:
        """Setting name -> path of every TLS file set."""
        return {
            name: path
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
            if (path := getattr(self, name)) is not None
        }

    @property
    def safe_address(self) -> str:
        """Host and port (or ``memory://``) without credentials, for messages."""
        raw = self.url.get_secret_value()
        if raw.startswith(MEMORY_URL):
            return MEMORY_URL
        rest = raw.split("://", 1)[1]
        rest = rest.rsplit("@", 1)[-1]
        return rest.split("/", 1)[0].split("?", 1)[0] or "localhost"

    @property
    def password(self) -> str | None:
        """The password in the URL, if any (to keep it out of logs)."""
        raw = self.url.get_secret_value()
        if raw.startswith(MEMORY_URL):
            return None
        try:
            return urlsplit(raw).password
        except ValueError:
            return None


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _db_of(url: str) -> int | None:
    if _scheme(url) == "unix" or url.startswith(MEMORY_URL):
        return None
    parts = urlsplit(url)
    path = parts.path.strip("/")
    if path:
        return int(path)
    db = parse_qs(parts.query).get("db")
    return int(db[0]) if db else None


def check_redis_url(url: str) -> None:
    """Raise ``ValueError`` naming what is wrong with ``url``, without echoing it."""
    if url.startswith(MEMORY_URL):
        return
    scheme = _scheme(url)
    if scheme not in _SCHEMES:
        raise ValueError(
            "expected a redis://, rediss://, redis+cluster://, rediss+cluster://, "
            "unix:// or memory:// URL"
        )
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path")
        db = query.get("db")
        if db and not db[0].isdigit():
            raise ValueError("the db query parameter must be a number")
        return
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    if parts.hostname is None and parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0] != "":
        raise ValueError("the host cannot be parsed")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(
            "the database (the URL's path) must be a number, as in redis://host:6379/0"
        )
    db = query.get("db")
    if db and not db[0].isdigit():
        raise ValueError("the db query parameter must be a number")
