"""Redis settings: bad URLs give clear errors (never echoing the URL), TLS options."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TRADESTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://:pw-hunter2@cache:abc/0", "port must be a number"),
        ("redis://:pw-hunter2@cache:70000/0", "port must be a number"),
        ("redis://:pw-hunter2@cache:6379/notadb", "database (the URL's path) must be a number"),
        ("redis://:pw-hunter2@cache:6379/0?db=x", "db query parameter must be a number"),
        ("http://:pw-hunter2@cache:6379/0", "expected a redis://"),
        ("unix://", "socket's path"),
        ("redis+cluster://:pw-hunter2@cache:6379/3", "only database 0"),
    ],
)
def test_bad_urls_name_the_variable_and_never_the_url(
    monkeypatch: pytest.MonkeyPatch, url: str, needle: str
) -> None:
    monkeypatch.setenv("TRADESTREAM_REDIS__URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    text = str(caught.value)
    assert "TRADESTREAM_REDIS__URL" in text or "TRADESTREAM_REDIS" in text
    assert needle in text
    assert "pw-hunter2" not in text and "cache" not in text


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://cache",
        "rediss://user:pw@cache:6380/2",
        "redis://cache:6379/?db=3",
        "unix:///run/redis.sock?db=1",
        "memory://",
        "redis+cluster://seed:7000/0",
    ],
)
def test_good_urls_load(url: str) -> None:
    assert RedisSettings(url=SecretStr(url)).url.get_secret_value() == url


def test_tls_files_need_a_tls_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESTREAM_REDIS__URL", "redis://cache:6379/0")
    monkeypatch.setenv("TRADESTREAM_REDIS__SSL_CAFILE", "/etc/ca.pem")
    with pytest.raises(SettingsError, match="not rediss://"):
        load_settings()


def test_client_cert_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="go together"):
        RedisSettings(url=SecretStr("rediss://cache:6380/0"), ssl_certfile="/c.pem")


def test_tls_kwargs_carry_the_files_and_verification() -> None:
    s = RedisSettings(
        url=SecretStr("rediss://cache:6380/0"),
        ssl_cafile="/ca.pem",
        ssl_certfile="/c.pem",
        ssl_keyfile="/k.pem",
    )
    assert s.tls_kwargs() == {
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
    }
    assert not s.tls_verification_off
    off = RedisSettings(url=SecretStr("rediss://cache:6380/0"), ssl_verify=False)
    assert off.tls_verification_off
    assert off.tls_kwargs() == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}
    assert RedisSettings(url=SecretStr("redis://cache:6379/0")).tls_kwargs() == {}


def test_verification_off_in_the_url_is_noticed() -> None:
    s = RedisSettings(url=SecretStr("rediss://cache:6380/0?ssl_cert_reqs=none"))
    assert s.tls_verification_off
    assert not RedisSettings(url=SecretStr("rediss://cache:6380/0")).tls_verification_off


def test_cluster_by_scheme_or_switch() -> None:
    by_scheme = RedisSettings(url=SecretStr("rediss+cluster://u:p@seed:7000/0"))
    assert by_scheme.is_cluster and by_scheme.uses_tls
    assert by_scheme.client_url == "rediss://u:p@seed:7000/0"
    assert RedisSettings(url=SecretStr("redis://seed:7000"), cluster=True).is_cluster
    assert not RedisSettings(url=SecretStr("redis://seed:7000")).is_cluster


def test_safe_address_and_password() -> None:
    s = RedisSettings(url=SecretStr("rediss://user:pw-1234@cache:6380/0?ssl_cert_reqs=none"))
    assert s.safe_address == "cache:6380"
    assert s.password == "pw-1234"
    assert RedisSettings().password is None


def test_dedup_shards_default_by_backend_and_bounds() -> None:
    assert RedisSettings(url=SecretStr("redis://cache:6379/0")).dedup_shard_count == 1
    assert RedisSettings(url=SecretStr("redis+cluster://seed:7000")).dedup_shard_count == 16
    assert RedisSettings(url=SecretStr("redis://seed:7000"), cluster=True).dedup_shard_count == 16
    explicit = RedisSettings(url=SecretStr("redis+cluster://seed:7000"), dedup_shards=4)
    assert explicit.dedup_shard_count == 4
    with pytest.raises(ValueError):
        RedisSettings(dedup_shards=0)
