"""Read side of the request log: filtered listings and grouped analytics, all SQL parameterised."""

from __future__ import annotations

import re
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.logstore.record import COLUMNS, from_row

MAX_LIMIT = 1000
# Tag names go into a JSON path; the whitelist keeps them from reaching into anything but one top-level key.
TAG_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
STATUS_CLASS = re.compile(r"([1-5])xx")
TIME_BUCKET = re.compile(r"time:([1-9][0-9]{0,8})")
_GROUP_COLUMNS = {"provider": "provider", "model": "model", "key": "key_name"}
# Two columns at once, `key+model`: each group is the JSON array [key_name, model] (the dashboard's top models per
# key). JSON keeps the pair apart whatever the names hold, and a NULL stays null.
PAIR_SEPARATOR = "+"
PERCENTILES = (0.5, 0.95)
# Up to this many rows in a range, percentiles are computed by sorting in Python (faster); beyond, in SQLite.
PYTHON_PERCENTILE_MAX_ROWS = 1_000_000
_LIST_COLUMNS = ("id", *COLUMNS)


@dataclass
class Where:
    """A conjunction of SQL conditions and their parameters, built one filter at a time."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, clause: str, *params: Any) -> None:
        """AND one condition with its parameters."""
        self.clauses.append(clause)
        self.params.extend(params)

    def sql(self) -> str:
        """Return the WHERE clause (empty when nothing filters)."""
        return f"WHERE {' AND '.join(self.clauses)}" if self.clauses else ""


def tag_path(tag: str) -> str:
    """Return the JSON path of a metadata tag, refusing names outside the whitelist."""
    if not isinstance(tag, str) or not TAG_NAME.fullmatch(tag):
        raise ValueError(f"metadata tag name must match {TAG_NAME.pattern}, got {tag!r}")
    # Quoted, so a dot in the name is part of the key rather than a path step.
    return f'$."{tag}"'


def list_filters(*, since: float | None, until: float | None, key_name: str | None, provider: str | None,
                 status: int | None, status_class: str | None, trace_id: str | None,
                 metadata: Mapping[str, str] | None, before_id: int | None, client_ip: str | None = None) -> Where:
    """Return the conditions of a listing query; since is inclusive, until exclusive."""
    where = Where()
    if since is not None:
        where.add("ts >= ?", float(since))
    if until is not None:
        where.add("ts < ?", float(until))
    for column, value in (("key_name", key_name), ("provider", provider), ("trace_id", trace_id),
                          ("client_ip", client_ip)):
        if value is not None:
            where.add(f"{column} = ?", str(value))
    if status is not None:
        where.add("status = ?", int(status))
    if status_class is not None:
        low = status_class_floor(status_class)
        where.add("status >= ? AND status < ?", low, low + 100)
    for tag, value in (metadata or {}).items():
        where.add("json_extract(metadata, ?) = ?", tag_path(tag), str(value))
    if before_id is not None:
        where.add("id < ?", int(before_id))
    return where


def status_class_floor(status_class: str) -> int:
    """Return 200 for "2xx" and so on."""
    match = STATUS_CLASS.fullmatch(status_class) if isinstance(status_class, str) else None
    if match is None:
        raise ValueError(f"status_class must be one of 1xx..5xx, got {status_class!r}")
    return int(match.group(1)) * 100


def list_requests(conn: sqlite3.Connection, where: Where, limit: int) -> list[dict[str, Any]]:
    """Return matching rows, newest (highest id) first, at most limit of them."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    sql = f"SELECT {', '.join(_LIST_COLUMNS)} FROM requests {where.sql()} ORDER BY id DESC LIMIT ?"
    return [from_row(_LIST_COLUMNS, row) for row in conn.execute(sql, [*where.params, limit])]


def group_expression(group_by: str) -> tuple[str, list[Any], bool]:
    """Return the SQL expression a grouping stands for, its parameters, and whether it is a time bucket."""
    if not isinstance(group_by, str):
        raise ValueError(f"group_by must be a string, got {group_by!r}")
    if group_by in _GROUP_COLUMNS:
        return _GROUP_COLUMNS[group_by], [], False
    first, separator, second = group_by.partition(PAIR_SEPARATOR)
    if separator and first in _GROUP_COLUMNS and second in _GROUP_COLUMNS and first != second:
        return f"json_array({_GROUP_COLUMNS[first]}, {_GROUP_COLUMNS[second]})", [], False
    if group_by.startswith("metadata:"):
        return "json_extract(metadata, ?)", [tag_path(group_by.removeprefix("metadata:"))], False
    match = TIME_BUCKET.fullmatch(group_by)
    if match is not None:
        seconds = int(match.group(1))
        return "(CAST(ts / ? AS INTEGER) * ?)", [seconds, seconds], True
    raise ValueError("group_by must be provider, model, key, two of those joined by + (key+model), metadata:<tag> "
                     f"or time:<seconds>, got {group_by!r}")


def analytics(conn: sqlite3.Connection, *, since: float, until: float, group_by: str) -> list[dict[str, Any]]:
    """Return per-group totals and latency percentiles of the requests with since <= ts < until."""
    expr, expr_params, is_time = group_expression(group_by)
    # The group expression sits in a subquery's select list, so its parameters come before the range's.
    source = f"SELECT {expr} AS g, * FROM requests WHERE ts >= ? AND ts < ?"
    params = [*expr_params, float(since), float(until)]
    # One read transaction: both statements see the same snapshot, even while writers commit.
    conn.execute("BEGIN")
    try:
        groups = _totals(conn, source, params)
        rows = sum(group["requests"] for group in groups.values())
        percentiles = _percentiles_in_python if rows <= PYTHON_PERCENTILE_MAX_ROWS else _percentiles_in_sqlite
        for group, values in percentiles(conn, source, params).items():
            groups[group].update(values)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # nothing was written; this just ends the snapshot
    result = list(groups.values())
    if is_time:
        result.sort(key=lambda row: row["group"])
    else:
        result.sort(key=lambda row: (-row["requests"], str(row["group"])))
    return result


def _totals(conn: sqlite3.Connection, source: str, params: list[Any]) -> dict[Any, dict[str, Any]]:
    """Return counts and sums per group, keyed by group value."""
    sql = f"""SELECT g, COUNT(*), SUM(status >= 400), TOTAL(input_tokens), TOTAL(output_tokens),
                     SUM(cost_usd), SUM(unknown_price)
              FROM ({source}) GROUP BY g"""
    out: dict[Any, dict[str, Any]] = {}
    for group, requests, errors, input_tokens, output_tokens, cost, unknown in conn.execute(sql, params):
        out[group] = {
            "group": group, "requests": requests, "errors": errors,
            "p50_ms": None, "p95_ms": None,
            "input_tokens": int(input_tokens), "output_tokens": int(output_tokens),
            # None when no request of the group had a known price; unknown_price says how many lacked one.
            "cost_usd": cost, "unknown_price": unknown,
        }
    return out


def _percentiles_in_python(conn: sqlite3.Connection, source: str, params: list[Any]) -> dict[Any, dict[str, float]]:
    """Return exact p50/p95 per group by sorting each group's latencies here (about 40 MB per million rows)."""
    latencies: defaultdict[Any, list[float]] = defaultdict(list)
    for group, latency in conn.execute(f"SELECT g, latency_ms FROM ({source})", params):
        latencies[group].append(latency)
    out: dict[Any, dict[str, float]] = {}
    for group, values in latencies.items():
        values.sort()
        out[group] = _named(len(values), _by_rank(values))
    return out


def _percentiles_in_sqlite(conn: sqlite3.Connection, source: str, params: list[Any]) -> dict[Any, dict[str, float]]:
    """Return exact p50/p95 per group, letting SQLite sort: Python only sees the ranks around each percentile.

    About twice as slow as sorting in Python, but memory stays flat (SQLite's sorter spills to disk),
    so it takes over for ranges too big to hold in a worker.
    """
    # p is bound, not spelled in the SQL: SQLite then truncates the very double Python's interpolate() uses.
    ranks = " OR ".join("rn - 1 = CAST((n - 1) * ? AS INTEGER) OR rn - 2 = CAST((n - 1) * ? AS INTEGER)"
                        for _ in PERCENTILES)
    sql = f"""SELECT g, n, rn, latency_ms FROM (
                  SELECT g, latency_ms, ROW_NUMBER() OVER w AS rn,
                         COUNT(*) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS n
                  FROM ({source})
                  WINDOW w AS (PARTITION BY g ORDER BY latency_ms))
              WHERE {ranks}"""
    by_group: dict[Any, tuple[int, dict[int, float]]] = {}
    for group, n, rn, latency in conn.execute(sql, [*params, *(p for p in PERCENTILES for _ in range(2))]):
        by_group.setdefault(group, (n, {}))[1][rn] = latency
    return {group: _named(n, ranked.__getitem__) for group, (n, ranked) in by_group.items()}


def _by_rank(values: list[float]) -> Callable[[int], float]:
    """Return a reader of a sorted list by 1-based rank."""
    return lambda rank: values[rank - 1]


def _named(n: int, at_rank: Callable[[int], float]) -> dict[str, float]:
    """Return {"p50_ms": ..., "p95_ms": ...} for n sorted values readable by 1-based rank."""
    return {f"p{round(p * 100)}_ms": interpolate(n, at_rank, p) for p in PERCENTILES}


def interpolate(n: int, at_rank: Callable[[int], float], p: float) -> float:
    """Return the p-quantile of n sorted values: linear between the closest ranks, as numpy's default."""
    position = (n - 1) * p
    low = int(position)
    below = at_rank(low + 1)
    above = at_rank(low + 2) if low + 2 <= n else below
    return below + (above - below) * (position - low)
