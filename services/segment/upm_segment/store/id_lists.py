"""Statements over a list of profile ids, sized for the dialect."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Text, any_, literal
from sqlalchemy.dialects.postgresql import ARRAY

SQLITE_CHUNK = 500


def id_in(column: Any, ids: Sequence[str], dialect: str) -> Any:
    """`column` is one of `ids`: one array parameter on PostgreSQL (a statement that compiles
    once whatever the number of ids), an expanded IN list on SQLite."""
    if dialect == "postgresql":
        return column == any_(literal(list(ids), ARRAY(Text)))
    return column.in_(ids)


def id_chunks(ids: Collection[str], dialect: str) -> list[list[str]]:
    """`ids` sorted, in one chunk on PostgreSQL and in chunks that keep SQLite under its limit
    of bound parameters."""
    ordered = sorted(set(ids))
    if dialect == "postgresql":
        return [ordered] if ordered else []
    return [ordered[start : start + SQLITE_CHUNK] for start in range(0, len(ordered), SQLITE_CHUNK)]
