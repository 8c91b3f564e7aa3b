"""certd/store/__init__.py: the store a `storage:` URL names (make_store, BACKENDS), and what
the config, the location checks and the SQLite-only commands make of each kind."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from certd import store as stores
from certd.cli_backup import state_paths
from certd.config import Config, parse
from certd.errors import CertdError, ConfigError
from certd.store import describe_storage, make_store, storage_problem, storage_scheme
from certd.store.location import problems
from certd.store.memory import MemoryStore
from certd.store.sqlite import SqliteStore


def test_sqlite_by_default_and_by_url(tmp_path):
    default = make_store(Config(state_dir=tmp_path))
    assert isinstance(default, SqliteStore) and default.path == tmp_path / "certd.db"
    named = make_store(Config(state_dir=tmp_path, storage=f"sqlite:///{tmp_path}/other.db"))
    assert isinstance(named, SqliteStore) and named.path == tmp_path / "other.db"
    assert storage_scheme(None) == storage_scheme("SQLite:///x") == "sqlite"


async def test_memory_builds_an_unshared_store_and_says_so(tmp_path, caplog):
    cfg = Config(state_dir=tmp_path, storage="memory://")
    assert cfg.database_path is None
    with caplog.at_level(logging.WARNING, logger="certd.store"):
        one, two = make_store(cfg), make_store(cfg)
    assert isinstance(one, MemoryStore) and one.data is not two.data
    assert "nothing certd stores survives" in caplog.text
    assert describe_storage(cfg) == "memory://"
    await one.open()
    assert await one.get_alias("a.example") is None
    await one.close()


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://u:s3cret@db/certd", "unknown storage mysql://: use sqlite:///PATH"),
    ("s3cret", "unknown storage URL: use sqlite:///PATH"),
    ("", "unknown storage URL"),
    ("sqlite://certd.db", "write the SQLite store as sqlite:///PATH"),
    ("sqlite:///", "write the SQLite store as sqlite:///PATH"),
    ("memory://s3cret", "memory:// takes nothing after it"),
])
def test_unusable_urls_are_config_errors_that_never_repeat_them(url, says):
    with pytest.raises(ConfigError) as err:
        parse({"storage": url})
    assert err.value.problems[0].startswith(f"storage: {says}")
    assert "s3cret" not in str(err.value)


def test_a_scheme_known_but_not_built_is_refused_as_unsupported(monkeypatch, tmp_path):
    monkeypatch.setitem(stores.BACKENDS, "memory", None)
    assert storage_problem("memory://") == (
        "memory:// is not supported in this version: use sqlite:///PATH")
    with pytest.raises(ConfigError, match="not supported in this version"):
        parse({"storage": "memory://"})
    # a Config made without validation gets the same answer from the factory
    cfg = Config.model_construct(state_dir=tmp_path, storage="memory://")
    with pytest.raises(ConfigError, match="memory:// is not supported in this version"):
        make_store(cfg)


def test_location_checks_only_the_state_dir_without_a_sqlite_file(tmp_path):
    state = tmp_path / "state"
    assert problems(state, None) == []
    (tmp_path / "file").write_text("")
    assert problems(tmp_path / "file", None) == [f"state_dir {tmp_path / 'file'}: not a "
                                                 "directory"]


def test_backup_refuses_a_store_that_is_not_a_sqlite_file(tmp_path):
    assert state_paths(Config(state_dir=tmp_path)).database == tmp_path / "certd.db"
    with pytest.raises(CertdError, match="memory:// is not a SQLite file"):
        state_paths(Config(state_dir=tmp_path, storage="memory://"))


def test_describe_storage_hides_a_password(tmp_path):
    assert describe_storage(Config(state_dir=tmp_path)) == str(tmp_path / "certd.db")
    cfg = Config.model_construct(state_dir=tmp_path, storage="postgresql://u:s3cret@h/db")
    assert describe_storage(cfg) == "postgresql://u:***@h/db"


def test_database_path_is_the_sqlite_file_only():
    assert Config(state_dir=Path("/srv/s")).database_path == Path("/srv/s/certd.db")
    assert Config(storage="sqlite:////abs/x.db").database_path == Path("/abs/x.db")
    assert Config(storage="memory://").database_path is None
