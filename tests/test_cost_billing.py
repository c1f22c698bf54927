"""The Snowflake billing model's edge cases (clinipipe.cost.billing): pure, no warehouse."""

from __future__ import annotations

import pytest

from clinipipe.cost.billing import (
    WarehouseBilling,
    attribute,
    bill_warehouse,
    charges_of,
    credits_between,
    credits_per_hour,
    total_credits,
)

XS, M, X6 = credits_per_hour("XSMALL"), credits_per_hour("MEDIUM"), credits_per_hour("X6LARGE")
T0 = 1_764_806_400.0  # 2025-12-04 00:00 UTC


def seconds_billed(periods: list) -> float:  # type: ignore[type-arg]
    return sum(p.seconds for p in periods)


def test_credits_per_hour_by_size_double_each_step_to_512() -> None:
    assert [credits_per_hour(s) for s in ("XSMALL", "SMALL", "MEDIUM", "X4LARGE", "X6LARGE")] == [
        1, 2, 4, 128, 512,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown warehouse size"):
        credits_per_hour("HUGE")


def test_a_5_second_job_bills_the_60_second_minimum() -> None:
    wh = WarehouseBilling("CDC_WH", auto_suspend=1)
    periods = bill_warehouse(wh, [T0], [T0 + 5], [XS])
    assert len(periods) == 1
    assert periods[0].seconds == 60
    assert total_credits(periods) == pytest.approx(60 / 3600)


def test_the_idle_wait_until_auto_suspend_is_billed() -> None:
    wh = WarehouseBilling("CDC_WH", auto_suspend=60)
    periods = bill_warehouse(wh, [T0], [T0 + 5], [XS])
    assert periods[0].seconds == 65  # 5 s of work, then 60 s idle before suspending
    assert periods[0].busy_end == T0 + 5


def test_two_jobs_30_seconds_apart_with_auto_suspend_60_share_one_period() -> None:
    wh = WarehouseBilling("CDC_WH", auto_suspend=60)
    periods = bill_warehouse(wh, [T0, T0 + 40], [T0 + 10, T0 + 50], [XS, XS])
    assert len(periods) == 1 and periods[0].jobs == 2
    assert periods[0].seconds == 110  # 0 .. 50 busy-or-waiting, then 60 s to suspend
    # 90 s apart: two periods, two minimums' worth of idle
    apart = bill_warehouse(wh, [T0, T0 + 100], [T0 + 10, T0 + 110], [XS, XS])
    assert len(apart) == 2 and seconds_billed(apart) == 140


def test_a_size_change_bills_each_stretch_at_its_size() -> None:
    wh = WarehouseBilling("WH", auto_suspend=60)
    # XSMALL job 0..100, then resized to MEDIUM for a job 120..400: one period 0..460
    periods = bill_warehouse(wh, [T0, T0 + 120], [T0 + 100, T0 + 400], [XS, M])
    assert len(periods) == 1
    expected = (120 * XS + 340 * M) / 3600
    assert total_credits(periods) == pytest.approx(expected)


def test_a_short_resize_up_bills_the_added_size_for_60_seconds() -> None:
    wh = WarehouseBilling("WH", auto_suspend=0)  # never suspends: runs to the window's end
    # XSMALL from 0; a MEDIUM job at 100 (20 s); an XSMALL job at 130 sizes it back down
    periods = bill_warehouse(
        wh, [T0, T0 + 100, T0 + 130], [T0 + 50, T0 + 120, T0 + 140], [XS, M, XS],
        window_end=T0 + 600,
    )  # fmt: skip
    assert len(periods) == 1 and periods[0].end == T0 + 600
    # 600 s at XS, plus (M - XS) for 60 s (it ran 30 s at MEDIUM, the minimum is 60)
    assert total_credits(periods) == pytest.approx((600 * XS + 60 * (M - XS)) / 3600)


def test_overlapping_jobs_on_one_cluster_bill_the_union_once() -> None:
    wh = WarehouseBilling("WH", auto_suspend=60)
    periods = bill_warehouse(wh, [T0, T0 + 10, T0 + 20], [T0 + 100, T0 + 50, T0 + 200], [M] * 3)
    assert len(periods) == 1 and periods[0].jobs == 3
    assert periods[0].seconds == 260
    attributed = attribute(periods, [T0, T0 + 10, T0 + 20], [T0 + 100, T0 + 50, T0 + 200])
    # Busy 0..200 s at MEDIUM is attributed; the 60 s wait is idle.
    assert attributed.sum() == pytest.approx(200 * M / 3600)
    # 10..20: two jobs share; 20..50: three share
    first = (10 + 10 / 2 + 30 / 3 + 50 / 2) * M / 3600
    assert attributed[0] == pytest.approx(first)


def test_multi_cluster_bills_a_second_cluster_while_jobs_would_queue() -> None:
    one = WarehouseBilling("WH", auto_suspend=60, max_clusters=1, concurrency=1)
    two = WarehouseBilling("WH", auto_suspend=60, max_clusters=2, concurrency=1)
    starts, ends = [T0, T0 + 100], [T0 + 300, T0 + 200]  # 100 s of two jobs at once
    single = bill_warehouse(one, starts, ends, [M, M])
    multi = bill_warehouse(two, starts, ends, [M, M])
    assert total_credits(single) == pytest.approx(360 * M / 3600)
    assert sorted((p.cluster, p.seconds) for p in multi) == [(0, 360), (1, 160)]
    assert total_credits(multi) == pytest.approx((360 + 160) * M / 3600)
    # up to `concurrency` jobs share a cluster: no second cluster
    roomy = WarehouseBilling("WH", auto_suspend=60, max_clusters=2, concurrency=8)
    assert len(bill_warehouse(roomy, starts, ends, [M, M])) == 1


def test_a_period_still_running_is_billed_to_the_window_end_only() -> None:
    wh = WarehouseBilling("SERVE_WH", auto_suspend=86400)
    periods = bill_warehouse(wh, [T0], [T0 + 30], [XS], window_end=T0 + 3600)
    assert periods[0].end == T0 + 3600


def test_credits_split_across_days_by_time() -> None:
    wh = WarehouseBilling("INIT_WH", auto_suspend=60)
    # a 2-hour X6LARGE backfill across midnight: 1 h each side (+60 s idle after)
    start = T0 + 86400 - 3600
    periods = bill_warehouse(wh, [start], [start + 7200], [X6])
    days = credits_between(charges_of(periods), [T0, T0 + 86400, T0 + 2 * 86400])
    assert days[0] == pytest.approx(512.0)
    assert days[1] == pytest.approx(512.0 + 512 * 60 / 3600)
    assert days.sum() == pytest.approx(total_credits(periods))


def test_the_input_order_does_not_matter() -> None:
    wh = WarehouseBilling("WH", auto_suspend=60)
    a = bill_warehouse(wh, [T0, T0 + 500, T0 + 30], [T0 + 5, T0 + 505, T0 + 40], [XS, M, XS])
    b = bill_warehouse(wh, [T0 + 500, T0 + 30, T0], [T0 + 505, T0 + 40, T0 + 5], [M, XS, XS])
    assert total_credits(a) == pytest.approx(total_credits(b))
    assert [p.start for p in a] == [p.start for p in b]
