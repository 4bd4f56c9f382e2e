"""Numbered migrations: a fresh file, an older file upgraded, a failing step, a newer file refused."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from customers.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    SchemaTooNew,
    load_migrations,
    migrate,
    schema_version,
    split_statements,
)
from customers.sqlite_store import SQLiteStore

LATEST = load_migrations()[-1].version


def version_of(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return schema_version(conn)


def tables_of(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def migrations_with(tmp_path: Path, **extra: str) -> Path:
    """A copy of the shipped migrations plus ``extra`` files (name -> SQL)."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    for name, sql in extra.items():
        (directory / name).write_text(sql, encoding="utf-8")
    return directory


def make_version_1(path: Path) -> None:
    """A database as version 1 left it, made by hand: 001's schema and a customer with a history."""
    first = load_migrations()[0]
    assert first.version == 1
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        for statement in first.statements():
            conn.execute(statement)
        conn.execute(
            "INSERT INTO customers (id, display_name, created_at, updated_at) VALUES ('old-1', 'Olga', 1, 1)"
        )
        conn.execute(
            "INSERT INTO identities (kind, system, value, customer_id, created_at) "
            "VALUES ('phone', '', '+442079460958', 'old-1', 1)"
        )
        conn.execute(
            "INSERT INTO interactions (customer_id, channel, at, recorded_at) VALUES ('old-1', 'call', 5, 5)"
        )
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")


async def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    async with SQLiteStore(path):
        pass
    assert version_of(path) == LATEST
    assert {"customers", "identities", "interactions", "customer_values", "segment_members"} <= tables_of(
        path
    )


async def test_empty_version_0_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    assert version_of(path) == 0
    async with SQLiteStore(path) as store:
        assert (await store.create_customer("New")).display_name == "New"
    assert version_of(path) == LATEST


async def test_older_database_is_upgraded_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_version_1(path)
    directory = migrations_with(
        tmp_path,
        **{
            f"{LATEST + 1:03d}_customer_tags.sql": """
                -- A later migration: a table and a column.
                CREATE TABLE customer_tags (
                    customer_id TEXT NOT NULL REFERENCES customers(id),
                    tag TEXT NOT NULL,
                    PRIMARY KEY (customer_id, tag)
                );
                ALTER TABLE customers ADD COLUMN vip INTEGER NOT NULL DEFAULT 0;
                INSERT INTO customer_tags SELECT id, 'migrated' FROM customers;
            """
        },
    )
    async with SQLiteStore(path, migrations_dir=directory) as store:
        found = await store.lookup_phone("020 7946 0958", region="GB")
        assert [c.customer.id for c in found] == ["old-1"]
        assert found[0].reasons[-1].startswith("last call")
        assert len(await store.timeline("old-1")) == 1
    assert version_of(path) == LATEST + 1
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT customer_id, tag FROM customer_tags").fetchall() == [
            ("old-1", "migrated")
        ]
        assert conn.execute("SELECT vip FROM customers").fetchall() == [(0,)]


async def test_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_version_1(path)
    directory = migrations_with(
        tmp_path,
        **{
            f"{LATEST + 1:03d}_half.sql": (
                "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
            )
        },
    )
    with pytest.raises(MigrationError, match=rf"{LATEST + 1:03d}_half.sql failed .*no such table"):
        await SQLiteStore(path, migrations_dir=directory).open()
    assert version_of(path) == LATEST
    assert "half_done" not in tables_of(path)


async def test_newer_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE from_the_future (x)")
        conn.execute(f"PRAGMA user_version = {LATEST + 5}")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    store = SQLiteStore(path)
    with pytest.raises(SchemaTooNew, match=rf"version {LATEST + 5} is newer than this callbridge knows"):
        await store.open()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL


def test_numbering_is_checked(tmp_path: Path) -> None:
    gap = migrations_with(tmp_path, **{f"{LATEST + 2:03d}_gap.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match=f"expected migration {LATEST + 1:03d}"):
        load_migrations(gap)
    bad_name = tmp_path / "bad"
    bad_name.mkdir()
    (bad_name / "1_first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNN_name\.sql"):
        load_migrations(bad_name)


def test_split_statements_keeps_triggers_strings_and_comments_whole() -> None:
    sql = """
        -- a comment; with a semicolon
        CREATE TABLE t (x TEXT DEFAULT 'a;b');
        CREATE TRIGGER t_guard BEFORE DELETE ON t
        BEGIN
            SELECT RAISE(ABORT, 'no; never');
        END;
        INSERT INTO t VALUES ('x'); INSERT INTO t VALUES ('y');
    """
    statements = split_statements(sql)
    assert len(statements) == 4
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(MigrationError, match="no BEGIN/COMMIT"):
        split_statements("BEGIN; CREATE TABLE t (x); COMMIT;", "002_x.sql")


def test_concurrent_runner_skips_what_another_applied(tmp_path: Path) -> None:
    path = tmp_path / "twice.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert migrate(conn) == (0, LATEST)
        assert migrate(conn) == (LATEST, LATEST)
