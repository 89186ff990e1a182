"""The per-address token bucket in front of ``POST /api/v1/enroll``."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.collector.config import load_collector_config
from vigil.collector.identity.ratelimit import RateLimiter
from vigil.configio import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_refused_until_a_token_is_regained() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, per_minute=6, clock=clock)  # one try per 10 s
    assert [limiter.take("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("10.0.0.1") == 10.0  # Retry-After: a whole token away
    assert limiter.take("10.0.0.2") == 0.0  # another address has its own bucket
    clock.now += 4.0
    assert limiter.take("10.0.0.1") == 6.0
    clock.now += 6.0
    assert limiter.take("10.0.0.1") == 0.0
    assert limiter.take("10.0.0.1") == 10.0
    clock.now += 3600.0  # a long pause refills to the burst, not beyond
    assert [limiter.take("10.0.0.1") for _ in range(4)] == [0.0, 0.0, 0.0, 10.0]


def test_memory_is_bounded_by_forgetting_the_least_recently_used_peer() -> None:
    limiter = RateLimiter(burst=1, per_minute=1, max_peers=2, clock=Clock())
    for peer in ("a", "b", "c"):
        assert limiter.take(peer) == 0.0
    assert len(limiter) == 2
    assert limiter.take("c") > 0  # still remembered
    assert limiter.take("a") == 0.0  # forgotten: starts full again


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(burst=0)


@pytest.mark.parametrize("value", ["0", "'ten'", "true", "1000000"])
def test_a_bad_rate_limit_names_the_file_key_and_value(tmp_path: Path, value: str) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(
        "listen: {host: 127.0.0.1, port: 0}\nstorage: {sqlite_path: c.db}\n"
        "auth: {admin_tokens: [admin-token-0123456789abcdef0123456789abcdef]}\n"
        f"enrollment: {{rate_limit: {value}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_collector_config(path)
    message = str(info.value)
    assert str(path) in message and "enrollment.rate_limit" in message


def test_the_rate_limit_defaults_to_ten_a_minute(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(
        "listen: {host: 127.0.0.1, port: 0}\nstorage: {sqlite_path: c.db}\n"
        "auth: {admin_tokens: [admin-token-0123456789abcdef0123456789abcdef]}\n"
    )
    assert load_collector_config(path).enroll_rate_per_minute == 10
    path.write_text(path.read_text() + "enrollment: {rate_limit: 600}\n")
    assert load_collector_config(path).enroll_rate_per_minute == 600
