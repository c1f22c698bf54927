"""What was metered: `_clinipipe.metering` read through a target, and Snowflake's own account
usage views rendered as SQL.

Every unit of work clinipipe runs writes one metering row in the same transaction as the work
(backfill ranges, CDC batches, refreshes, publishes, scans, redactions; backups and restores in
their own transaction after the backup): job, warehouse name and role, size, start, end, rows,
bytes and clinipipe's own CPU seconds (`clinipipe.targets.metering`). This module reads those
rows; it never writes.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from clinipipe.sql.dialect import Dialect

UTC = dt.timezone.utc
METERING_COLUMNS = (
    "job_id", "job", "warehouse", "warehouse_role", "size", "started_at", "ended_at",
    "rows_processed", "bytes_processed", "cpu_seconds",
)  # fmt: skip
_RANGE_SUFFIX = re.compile(r":\d+$")


class QueryTarget(Protocol):
    """What this module needs of a target (`clinipipe.targets.core.TargetCore`)."""

    dialect: Dialect
    type: str

    def query(self, sql: str) -> list[tuple[Any, ...]]: ...

    def table_exists(self, schema: str, table: str) -> bool: ...

    def control(self, table: str) -> str: ...


def epoch(value: Any) -> float:
    """Epoch seconds of a timestamp as a warehouse returns it (naive means UTC)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def job_kind(job: str) -> str:
    """A job's kind: its name without a range number (`backfill:labs:12` -> `backfill:labs`)."""
    return _RANGE_SUFFIX.sub("", job)


@dataclass(frozen=True)
class Metered:
    """Metered jobs, column by column (numpy arrays; times in epoch seconds)."""

    job_id: npt.NDArray[np.str_]
    job: npt.NDArray[np.str_]
    warehouse: npt.NDArray[np.str_]
    role: npt.NDArray[np.str_]
    size: npt.NDArray[np.str_]
    start: npt.NDArray[np.float64]
    end: npt.NDArray[np.float64]
    rows: npt.NDArray[np.float64]
    bytes: npt.NDArray[np.float64]
    """NaN where not recorded."""
    cpu: npt.NDArray[np.float64]
    """clinipipe's own CPU seconds for the job (the thread that ran it, not the warehouse's);
    NaN where not recorded (rows metered before the column existed)."""

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> Metered:
        """From rows in `METERING_COLUMNS` order (as `SELECT` returns them)."""
        data = list(rows)

        def col(i: int) -> list[Any]:
            return [r[i] for r in data]

        def num(i: int) -> npt.NDArray[np.float64]:
            # A row without column i (an older reader's shape) counts as not recorded.
            values = [r[i] if len(r) > i else None for r in data]
            return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

        return cls(
            np.array([str(v) for v in col(0)], dtype=np.str_),
            np.array([str(v) for v in col(1)], dtype=np.str_),
            np.array([str(v).upper() for v in col(2)], dtype=np.str_),
            np.array([str(v) for v in col(3)], dtype=np.str_),
            np.array([str(v).upper() for v in col(4)], dtype=np.str_),
            np.array([epoch(v) for v in col(5)], dtype=np.float64),
            np.array([epoch(v) for v in col(6)], dtype=np.float64),
            num(7),
            num(8),
            num(9),
        )

    @classmethod
    def empty(cls) -> Metered:
        return cls.from_rows([])

    def select(self, mask: npt.NDArray[np.bool_]) -> Metered:
        return Metered(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    def as_dict(self) -> dict[str, list[Any]]:
        """JSON-able (for the control socket): one list per column."""
        return {
            f: [None if isinstance(v, float) and v != v else v for v in getattr(self, f).tolist()]
            for f in self.__dataclass_fields__
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Any]]) -> Metered:
        fields = list(cls.__dataclass_fields__)
        n = len(data["job_id"])
        # `cpu` is missing from a process that predates it: not recorded.
        rows = list(zip(*(data.get(f, [None] * n) for f in fields), strict=True))
        metered = cls.from_rows(
            [
                (*r[:5], dt.datetime.fromtimestamp(r[5], UTC), dt.datetime.fromtimestamp(r[6], UTC),
                 *r[7:])
                for r in rows
            ]
        )  # fmt: skip
        return metered


def metering_sql(target: QueryTarget, since: dt.datetime, *, cpu: bool = True) -> str:
    """The SELECT of the metering rows of jobs that ended at or after `since`. `cpu=False`:
    for a metering table deployed before `cpu_seconds` existed (read as NULL)."""
    q = target.dialect.quote_literal
    columns = [c if cpu or c != "cpu_seconds" else "NULL AS cpu_seconds" for c in METERING_COLUMNS]
    return (
        f"SELECT {', '.join(columns)} FROM {target.control('metering')} "
        f"WHERE ended_at >= {q(since.astimezone(UTC).isoformat())} ORDER BY started_at"
    )


def load_metering(target: QueryTarget, since: dt.datetime) -> Metered:
    """The metered jobs that ended at or after `since` (none when nothing was deployed). A
    warehouse not deployed since `cpu_seconds` was added still reports (CPU not recorded)."""
    from clinipipe.sql.context import CONTROL_SCHEMA

    if not target.table_exists(CONTROL_SCHEMA, "metering"):
        return Metered.empty()
    try:
        return Metered.from_rows(target.query(metering_sql(target, since)))
    except Exception as first:  # the target's own error type is not known at this layer
        try:
            rows = target.query(metering_sql(target, since, cpu=False))
        except Exception:
            raise first from None
        return Metered.from_rows(rows)


# --- Snowflake's own account usage (ACCOUNT_USAGE lags up to 3 h; ANOMALIES_DAILY up to 8 h) ----


def warehouse_metering_history_sql(
    dialect: Dialect, warehouses: Sequence[str], since: dt.datetime
) -> str:
    """Hourly billed credits of `warehouses` from SNOWFLAKE.ACCOUNT_USAGE.WAREHOUSE_METERING_
    HISTORY since `since`: (hour start, warehouse, credits used, compute credits, credits
    attributed to queries). Idle = compute - attributed. Names are matched upper-case."""
    q = dialect.quote_literal
    names = ", ".join(q(w) for w in sorted({w.upper() for w in warehouses})) or "NULL"
    return (
        "SELECT start_time, warehouse_name, credits_used, credits_used_compute, "
        "COALESCE(credits_attributed_compute_queries, 0) AS credits_attributed\n"
        "FROM SNOWFLAKE.ACCOUNT_USAGE.WAREHOUSE_METERING_HISTORY\n"
        f"WHERE warehouse_name IN ({names})\n"
        f"  AND start_time >= {q(since.astimezone(UTC).isoformat())}::TIMESTAMP_LTZ\n"
        "ORDER BY start_time, warehouse_name"
    )


def anomalies_daily_sql(dialect: Dialect, since: dt.date) -> str:
    """Snowflake's own daily spend anomalies (SNOWFLAKE.ACCOUNT_USAGE.ANOMALIES_DAILY) since
    `since`, to show next to clinipipe's."""
    return (
        "SELECT date, is_anomaly, actual_value, forecasted_value, lower_bound, upper_bound\n"
        "FROM SNOWFLAKE.ACCOUNT_USAGE.ANOMALIES_DAILY\n"
        f"WHERE date >= {dialect.quote_literal(since.isoformat())}::DATE\n"
        "ORDER BY date"
    )


@dataclass(frozen=True)
class BilledHour:
    """One row of WAREHOUSE_METERING_HISTORY."""

    start: float
    warehouse: str
    credits: float
    compute: float
    attributed: float

    @property
    def idle(self) -> float:
        return max(self.compute - self.attributed, 0.0)


def billed_hours(rows: Iterable[Sequence[Any]]) -> list[BilledHour]:
    """Rows of `warehouse_metering_history_sql` as `BilledHour`s."""
    return [
        BilledHour(epoch(r[0]), str(r[1]).upper(), float(r[2] or 0), float(r[3] or 0),
                   float(r[4] or 0))
        for r in rows
    ]  # fmt: skip
