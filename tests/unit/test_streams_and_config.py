import os
from pathlib import Path

import pytest

from cryptostream.config import Settings
from cryptostream.ingest.streams import combined_stream_urls
from cryptostream.stackfile import read_live_stack_file, remove_stack_file, write_stack_file


def test_combined_urls_split_by_connection_limit() -> None:
    symbols = [f"S{i:03d}" for i in range(450)]
    urls = combined_stream_urls("ws://h:1/", symbols, per_connection=200)
    assert len(urls) == 3
    assert urls[0].startswith("ws://h:1/stream?streams=s000@trade/s001@trade")
    assert sum(url.count("@trade") for url in urls) == 450


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CSP_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("CSP_SYMBOLS", "btcusdt, ethusdt")
    monkeypatch.setenv("CSP_PARTITIONS", "4")
    settings = Settings()
    assert settings.symbols == ["BTCUSDT", "ETHUSDT"]
    assert settings.partitions == 4


def test_invalid_symbol_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSP_SYMBOLS", "BTC/USDT")
    with pytest.raises(ValueError, match="invalid symbol"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CSP_QUERY_MAX_HEADER_BYTES", "0"),
        ("CSP_QUERY_MAX_HEADER_BYTES", "100"),
        ("CSP_QUERY_HEADER_TIMEOUT_S", "0"),
        ("CSP_QUERY_HEADER_TIMEOUT_S", "-1"),
        ("CSP_QUERY_IDLE_TIMEOUT_S", "0"),
    ],
)
def test_query_connection_limits_must_be_positive(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("CSP_").lower()):
        Settings()


def test_live_stack_file_supplies_addresses_env_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CSP_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("CSP_KAFKA_BOOTSTRAP", raising=False)
    write_stack_file(
        tmp_path / "stack.json", kafka_bootstrap="127.0.0.1:1111", redis_url="redis://127.0.0.1:2/0"
    )
    assert Settings().kafka_bootstrap == "127.0.0.1:1111"
    monkeypatch.setenv("CSP_KAFKA_BOOTSTRAP", "127.0.0.1:9999")
    assert Settings().kafka_bootstrap == "127.0.0.1:9999"
    remove_stack_file(tmp_path / "stack.json")
    assert not (tmp_path / "stack.json").exists()


def test_stack_file_of_a_dead_stack_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text('{"pid": 999999999, "kafka_bootstrap": "x"}')
    assert read_live_stack_file(tmp_path / "stack.json") == {}
    (tmp_path / "stack.json").write_text(f'{{"pid": {os.getpid()}, "kafka_bootstrap": "x"}}')
    assert read_live_stack_file(tmp_path / "stack.json")["kafka_bootstrap"] == "x"  # a live one
