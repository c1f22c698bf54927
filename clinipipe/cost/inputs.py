"""What `cost report` and `cost anomalies` read from the warehouse, in one place: metering rows,
running backfills and, on Snowflake, the billed hours and Snowflake's own anomaly rows.

`gather_cost_inputs` only reads (it works on a read-only target, and on the open target of a
running `cdc start` through its control socket); `CostInputs.as_dict` / `from_dict` carry the
result over that socket as JSON.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from clinipipe.cost.anomalies import DAILY_DAYS, RunningJob, running_backfills
from clinipipe.cost.metering import (
    BilledHour,
    Metered,
    anomalies_daily_sql,
    billed_hours,
    load_metering,
    warehouse_metering_history_sql,
)
from clinipipe.cost.report import window
from clinipipe.spec.loader import LoadedSpec
from clinipipe.targets.base import Target, TargetError

ROLES = ("initialization", "incremental", "interactive")


@dataclass(frozen=True)
class CostInputs:
    start: dt.datetime
    end: dt.datetime
    metered: Metered
    """Metering of at least the last `DAILY_DAYS` + 1 days (the anomaly baselines need them)."""
    running: list[RunningJob]
    billed: list[BilledHour] | None
    """Snowflake's WAREHOUSE_METERING_HISTORY, when the target is Snowflake and it is readable."""
    snowflake_anomalies: list[list[Any]] | None
    """Rows of Snowflake's ANOMALIES_DAILY, when readable."""
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "metered": self.metered.as_dict(),
            "running": [asdict(r) for r in self.running],
            "billed": None if self.billed is None else [asdict(b) for b in self.billed],
            "snowflake_anomalies": self.snowflake_anomalies,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostInputs:
        return cls(
            dt.datetime.fromisoformat(d["start"]),
            dt.datetime.fromisoformat(d["end"]),
            Metered.from_dict(d["metered"]),
            [RunningJob(**r) for r in d["running"]],
            None if d["billed"] is None else [BilledHour(**b) for b in d["billed"]],
            d["snowflake_anomalies"],
            d.get("note"),
        )


def gather_cost_inputs(
    loaded: LoadedSpec, target: Target, days: int, now: dt.datetime
) -> CostInputs:
    """Read what the cost commands need for a window of `days` ending at `now`. Reads only.
    Snowflake's ACCOUNT_USAGE views are read when the target can (`reads_account_usage`); when
    they are not readable the figures are modelled from metering and `note` says why."""
    start, end = window(days, now)
    since = min(start, now - dt.timedelta(days=DAILY_DAYS + 1))
    metered = load_metering(target, since)
    running = running_backfills(loaded.spec, target, now.timestamp())
    billed: list[BilledHour] | None = None
    snowflake: list[list[Any]] | None = None
    note = None
    if target.dialect.name == "snowflake":
        names = [getattr(loaded.spec.warehouses, role).name for role in ROLES]
        try:
            billed = billed_hours(
                target.query(warehouse_metering_history_sql(target.dialect, names, start))
            )
            rows = target.query(anomalies_daily_sql(target.dialect, start.date()))
            snowflake = [[v.isoformat() if hasattr(v, "isoformat") else v for v in r] for r in rows]
        except TargetError as exc:
            note = (
                f"SNOWFLAKE.ACCOUNT_USAGE is not readable ({exc}); the figures are modelled "
                "from metering"
            )
    return CostInputs(start, end, metered, running, billed, snowflake, note)
