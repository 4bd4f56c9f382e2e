"""Numbered schema migrations for the SQLite customer store.

Rules:

1. A migration is a file ``NNN_name.sql`` in ``customers/migrations/`` (``001_initial.sql``,
   ``002_value_segments.sql``). Numbers start at 1 and have no gaps or repeats.
2. The database's ``PRAGMA user_version`` is the number of the last migration applied (0: none).
3. Each pending migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the
   ``user_version`` bump: a failing migration leaves the database at the version before it.
   The files hold no ``BEGIN``/``COMMIT`` of their own.
4. A database whose version is newer than the newest file is refused before anything is written
   (not even the journal mode): older code must not touch a newer schema.

Synchronous (``sqlite3.Connection``): the store runs it on its aiosqlite worker thread.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from customers.store import CustomerError

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationError",
    "SchemaTooNew",
    "load_migrations",
    "migrate",
    "schema_version",
    "split_statements",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"(\d{3})_([A-Za-z0-9_]+)\.sql")
_TRANSACTION = re.compile(r"^\s*(BEGIN|COMMIT|END|ROLLBACK)\b", re.IGNORECASE)


class MigrationError(CustomerError):
    """The schema cannot be brought to the version this code needs."""

    code = "migration-failed"
    status = 500


class SchemaTooNew(MigrationError):
    """The database was written by a newer version of callbridge."""

    code = "schema-too-new"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self) -> list[str]:
        return split_statements(self.path.read_text(encoding="utf-8"), self.path.name)


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in ``directory``, in order; checks the numbering."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNN_name.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"{migration.path}: expected migration {expected:03d} here (numbers start at 001, "
                "no gaps, no repeats)"
            )
    return migrations


def split_statements(sql: str, where: str = "<sql>") -> list[str]:
    """Split a script into statements (``sqlite3.complete_statement`` knows about strings,
    comments and trigger bodies); refuses transaction control, which belongs to the runner."""
    statements: list[str] = []
    buffer = ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            code = _strip_comments(statement)
            if not code.strip(" \t\r\n;"):
                continue
            if _TRANSACTION.match(code):
                raise MigrationError(f"{where}: no BEGIN/COMMIT in a migration: the runner owns it")
            statements.append(statement)
    if _strip_comments(buffer).strip(" \t\r\n;"):
        raise MigrationError(f"{where}: incomplete statement at the end: {buffer.strip()[:60]!r}")
    return statements


def _strip_comments(statement: str) -> str:
    lines = [line for line in statement.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines)


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def check_version(conn: sqlite3.Connection, migrations: list[Migration], where: str) -> int:
    """The database's version; ``SchemaTooNew`` (nothing written) if newer than the code."""
    current = schema_version(conn)
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise SchemaTooNew(
            f"{where}: database schema version {current} is newer than this callbridge knows "
            f"({latest}); upgrade callbridge or use a copy of the database (left untouched)"
        )
    return current


def migrate(
    conn: sqlite3.Connection, directory: Path = MIGRATIONS_DIR, *, where: str = "database"
) -> tuple[int, int]:
    """Apply the pending migrations, each in its own transaction; returns (from, to) versions.

    ``conn`` must be in autocommit mode (``isolation_level=None``)."""
    migrations = load_migrations(directory)
    start = check_version(conn, migrations, where)
    version = start
    for migration in migrations[start:]:
        statements = migration.statements()
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            version = check_version(conn, migrations, where)
            if version >= migration.version:
                conn.execute("COMMIT")
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version:d}")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise MigrationError(
                    f"{where}: migration {migration.path.name} failed ({exc}); the database stays "
                    f"at version {version}"
                ) from exc
            raise
        version = migration.version
        log.info("customer store %s migrated to version %d (%s)", where, version, migration.path.name)
    return start, version
