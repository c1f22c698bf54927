"""An HDR-style latency histogram: logarithmic buckets with a fixed relative precision.

Bucket edges grow by a constant factor (`per_decade` buckets per power of ten, 10 by default:
each bucket is ~26 % wider than the one before), so a 0.3 ms query and a 3 s stall are both
resolved to the same relative error, the point of an HDR histogram. Counts are exact; the
buckets only decide how values are grouped for display and in the JSON document.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Bucket", "histogram", "render_bars"]


@dataclass(frozen=True)
class Bucket:
    """Values v with `low_ms` <= v < `high_ms`; `cumulative` counts this bucket and all below."""

    low_ms: float
    high_ms: float
    count: int
    cumulative: int

    def as_dict(self) -> dict[str, float | int]:
        return {"low_ms": self.low_ms, "high_ms": self.high_ms, "count": self.count,
                "cumulative": self.cumulative}  # fmt: skip


def _edge(k: int, per_decade: int) -> float:
    return float(f"{10 ** (k / per_decade):.4g}")


def histogram(values_ms: Sequence[float], *, per_decade: int = 10) -> list[Bucket]:
    """The non-empty log buckets of `values_ms` in ascending order (values <= 0 count in the
    lowest bucket). The counts sum to ``len(values_ms)``."""
    if not values_ms:
        return []
    counts: dict[int, int] = {}
    floor = 1e-3  # 1 µs: below that a latency is noise
    for v in values_ms:
        k = math.floor(math.log10(max(v, floor)) * per_decade + 1e-9)
        counts[k] = counts.get(k, 0) + 1
    buckets: list[Bucket] = []
    running = 0
    for k in sorted(counts):
        running += counts[k]
        buckets.append(Bucket(_edge(k, per_decade), _edge(k + 1, per_decade), counts[k], running))
    return buckets


def render_bars(buckets: Sequence[Bucket], *, width: int = 40) -> list[tuple[str, str, str, str]]:
    """Rows for a terminal table: (range, count, cumulative %, bar). Bar lengths are
    proportional to the count on a square-root scale (so a tail of a few slow requests stays
    visible next to thousands of fast ones)."""
    if not buckets:
        return []
    total = buckets[-1].cumulative
    peak = max(b.count for b in buckets)
    rows = []
    for b in buckets:
        length = max(1, round(width * math.sqrt(b.count / peak)))
        rows.append((f"{b.low_ms:g}-{b.high_ms:g} ms", f"{b.count:,}",
                     f"{100 * b.cumulative / total:.2f}%", "█" * length))  # fmt: skip
    return rows
