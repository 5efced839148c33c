"""Engines (one per database URL and process) and sessions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    # The API and the worker write the same file from different processes: WAL lets readers go on
    # while one writes, and BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails
    # half-way when it turns from reading to writing (SQLite's "database is locked" on upgrade).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """The process's engine for a URL, made on first use."""
    with _lock:
        if url not in _engines:
            _engines[url] = _sqlite_engine(url) if url.startswith("sqlite") else create_engine(
                url, pool_pre_ping=True)
            _makers[url] = sessionmaker(_engines[url], expire_on_commit=False)
        return _engines[url]


def new_session(url: str | None = None) -> Session:
    url = url or get_settings().database_url
    get_engine(url)
    return _makers[url]()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back when it raises."""
    with new_session(url) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def dispose_engines() -> None:
    """Drop pooled connections inherited through fork, without closing the parent's (call after fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)


def dispose_all() -> None:
    """Close and forget every engine (tests drop their databases afterwards)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _makers.clear()
