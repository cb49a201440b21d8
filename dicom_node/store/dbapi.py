"""What the store's modules need of a database connection, whichever the engine: ``execute`` and
``executemany`` with ``?`` or ``:name`` parameters (sqlite3's styles, the SQL both engines share),
rows readable by position and by column name, ``rowcount``, ``fetchone``/``fetchall``/iteration.

SQLite's ``sqlite3.Connection`` is one as it is; :class:`dicom_node.store.postgres.PgConnection`
makes a psycopg connection one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any] | Mapping[str, Any]], /) -> Cursor: ...
    def close(self) -> None: ...
