"""``storage.url`` in the collector config, and the factory that opens what it names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vigil.collector import cli
from vigil.collector.config import load_collector_config
from vigil.collector.storage.factory import create_storage
from vigil.collector.storage.records import StorageError
from vigil.collector.storage.sqlite.backend import SqliteStorage
from vigil.collector.storage.url import redact, sqlite_url
from vigil.configio import CONFIG_EXIT_CODE, ConfigError

AUTH = "auth: {agent_tokens: [t-0123456789abcdef0123456789abcdef]}\n"


def config_with(tmp_path: Path, storage: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(AUTH + f"storage: {storage}\n")
    return path


@pytest.mark.parametrize(
    ("storage", "relative"),
    [
        ("{url: 'sqlite:///data/c.db'}", "data/c.db"),
        ("{sqlite_path: data/c.db}", "data/c.db"),
        ("{}", "var/collector.db"),
    ],
    ids=["url, relative to the config", "the older sqlite_path", "default"],
)
def test_a_relative_sqlite_path_resolves_against_the_config_file(
    tmp_path: Path, storage: str, relative: str
) -> None:
    config = load_collector_config(config_with(tmp_path, storage))
    assert config.storage_url == sqlite_url((tmp_path / relative).resolve())


def test_an_absolute_sqlite_url_takes_four_slashes(tmp_path: Path) -> None:
    path = config_with(tmp_path, f"{{url: 'sqlite:///{tmp_path}/abs.db'}}")
    assert load_collector_config(path).storage_url == f"sqlite:///{tmp_path}/abs.db"


def test_url_and_sqlite_path_together_are_an_error(tmp_path: Path) -> None:
    path = config_with(tmp_path, "{url: 'sqlite:///a.db', sqlite_path: b.db}")
    with pytest.raises(ConfigError, match=r"storage\.url: set either url or sqlite_path"):
        load_collector_config(path)


@pytest.mark.parametrize("url", ["mysql://x/y", "collector.db", "sqlite:///"])
def test_an_unsupported_url_names_file_key_and_value(tmp_path: Path, url: str) -> None:
    path = config_with(tmp_path, f"{{url: '{url}'}}")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    assert (caught.value.file, caught.value.key, caught.value.value) == (
        str(path),
        "storage.url",
        url,
    )
    assert "supported: sqlite, postgresql" in str(caught.value)


@pytest.mark.parametrize(
    "url", ["postgresql://vigil@db.example.test:5432/vigil", "postgres://db.example.test/v"]
)
def test_a_postgresql_url_is_kept_as_written(tmp_path: Path, url: str) -> None:
    assert load_collector_config(config_with(tmp_path, f"{{url: '{url}'}}")).storage_url == url


def test_a_postgresql_url_with_a_bad_port_exits_2_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_with(tmp_path, "{url: 'postgresql://vigil:s3cret@db.example.test:port/v'}")
    assert cli.main(["--config", str(path)]) == CONFIG_EXIT_CODE == 2
    err = capsys.readouterr().err
    assert str(path) in err and "storage.url" in err and "postgresql://vigil:***@" in err
    assert "s3cret" not in err


def test_an_unreachable_postgresql_server_fails_start_up_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Port 1 on 127.0.0.1 refuses at once: start-up fails (exit 1), no traceback."""
    url = "postgresql://vigil:s3cret@127.0.0.1:1/vigil"
    path = config_with(tmp_path, f"{{url: '{url}'}}")
    assert cli.main(["--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "postgresql://vigil:***@127.0.0.1:1/vigil" in err and "cannot connect" in err
    assert "s3cret" not in err and "Traceback" not in err


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:pw@h:5/db?x=1") == "postgresql://u:***@h:5/db?x=1"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_the_factory_opens_an_sqlite_url(tmp_path: Path) -> None:
    storage = create_storage(sqlite_url(tmp_path / "sub" / "f.db"))
    try:
        assert isinstance(storage, SqliteStorage) and storage.path == tmp_path / "sub" / "f.db"
    finally:
        storage.close()


def test_the_factory_refuses_another_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported storage URL 'mysql://x/y'"):
        create_storage("mysql://x/y")


def test_a_postgresql_url_without_psycopg_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A collector installed without the postgresql extra: a clear StorageError (exit 1
    at start-up), not an ImportError traceback."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # None: "import psycopg" fails
    for name in [m for m in sys.modules if m.startswith("vigil.collector.storage.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(StorageError, match=r"install vigil\[postgresql\]") as caught:
        create_storage("postgresql://vigil:s3cret@127.0.0.1:1/vigil")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("storage", "key"),
    [
        ("{url: 'sqlite:///blocker/c.db'}", "storage.url"),
        ("{sqlite_path: blocker/sub/c.db}", "storage.sqlite_path"),
        ("{sqlite_path: folder}", "storage.sqlite_path"),
    ],
    ids=["url under a file", "sqlite_path under a file", "a folder"],
)
def test_a_database_path_that_cannot_be_a_file_exits_2_naming_the_key(
    tmp_path: Path, storage: str, key: str
) -> None:
    (tmp_path / "blocker").write_text("a regular file\n")
    (tmp_path / "folder").mkdir()
    path = config_with(tmp_path, storage)
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    assert (caught.value.file, caught.value.key) == (str(path), key)
    assert "is a file, not a folder" in str(caught.value) or "is a folder" in str(caught.value)


def test_the_collector_exits_2_for_a_database_under_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "blocker").write_text("a regular file\n")
    path = config_with(tmp_path, "{sqlite_path: blocker/c.db}")
    assert cli.main(["--config", str(path)]) == CONFIG_EXIT_CODE
    err = capsys.readouterr().err
    assert "storage.sqlite_path" in err and "Traceback" not in err
