"""The few SQL expressions that SQLite and PostgreSQL spell differently, in one place (issue 13).

Every query of the node is written once, in the SQL both engines share; where there is none, the
query asks here for the fragment of its engine (``store.engine``: ``sqlite`` or ``postgresql``, or
the store itself). Each function returns SQL text with no parameters of its own.
"""

from __future__ import annotations

from typing import Any

ENGINES = ("sqlite", "postgresql")


def engine_of(store_or_engine: Any) -> str:
    """``sqlite`` or ``postgresql`` from a store (its ``engine``) or the name itself."""
    engine = store_or_engine if isinstance(store_or_engine, str) else getattr(store_or_engine, "engine", None)
    if engine not in ENGINES:
        raise ValueError(f"engine: sqlite or postgresql (got {engine!r})")
    return str(engine)


def group_concat(store_or_engine: Any, expr: str, *, distinct: bool = False) -> str:
    """The values of ``expr`` in the group joined by ``,`` (NULLs left out; NULL when none), in no
    given order: SQLite's ``GROUP_CONCAT``, PostgreSQL's ``string_agg`` (whose argument must be text).
    SQLite takes no separator with DISTINCT, so the separator is always its default ``,``."""
    d = "DISTINCT " if distinct else ""
    if engine_of(store_or_engine) == "sqlite":
        return f"GROUP_CONCAT({d}{expr})"
    return f"string_agg({d}CAST({expr} AS TEXT), ',')"


def json_text(store_or_engine: Any, column: str, key: str) -> str:
    """The text at top-level ``key`` of the JSON object in text ``column`` (NULL when absent or the
    column is NULL): SQLite's ``json_extract(column, '$.key')``, PostgreSQL's ``column::json ->> 'key'``.
    ``key`` is a plain identifier (it is written into the SQL)."""
    if not key.isidentifier():
        raise ValueError(f"json key: an identifier (got {key!r})")
    if engine_of(store_or_engine) == "sqlite":
        return f"json_extract({column}, '$.{key}')"
    return f"(CAST({column} AS json) ->> '{key}')"
