"""Dates inside notes under the `shifted` policy: moved by the row's offset, spelled as before."""

from __future__ import annotations

import pyarrow as pa
import pytest

from clinipipe.phi import DetectorSet
from clinipipe.phi.redact_text import redact_notes, shift_date_text


@pytest.mark.parametrize(
    "text, days, expected",
    [
        ("03/04/2021", 7, "03/11/2021"),
        ("3/4/2021", -364, "3/5/2020"),
        ("12/31/2020", 7, "1/7/2021"),
        ("2016-12-13", 35, "2017-01-17"),
        ("02/29/2020", 7, "03/07/2020"),
        ("4-Mar-21", 7, "11-Mar-21"),
        ("March 4th, 2021", -7, "February 25th, 2021"),
        ("MARCH 1ST 2020", 364, "FEBRUARY 28TH 2021"),
        ("4 March 2021", 7, "11 March 2021"),
        ("Sept. 3, 2019", 7, "Sep. 10, 2019"),
        ("Mar 4", 7, "Mar 11"),
        ("12/30", 7, "1/6"),
        ("Feb 29", 7, "Mar 7"),
        # date-times: the date moves, the time of day stays (a detected span holds both)
        ("2021-03-04T10:22:00", 7, "2021-03-11T10:22:00"),
        ("03/04/2021 10:22", 7, "03/11/2021 10:22"),
        ("18-Apr-2019 03:42", 1, "19-Apr-2019 03:42"),
        ("11/01/2018 @ 0033", 1, "11/02/2018 @ 0033"),
    ],
)
def test_a_date_moves_in_its_own_spelling(text: str, days: int, expected: str) -> None:
    assert shift_date_text(text, days) == expected


@pytest.mark.parametrize("text", ["2021", "the 4th", "Spring 2021", "13/45/2020", "Feb 30, 2021"])
def test_what_is_not_a_full_day_is_not_shifted(text: str) -> None:
    assert shift_date_text(text, 7) is None


def test_notes_dates_shift_per_row_and_other_phi_is_tagged() -> None:
    detectors = DetectorSet.load()
    texts = pa.array(
        ["Seen on 03/04/2021, MRN 12345678, by Dr. Smith.", "Follow up 2021-03-04.", None,
         "Seen on 03/04/2021."]
    )  # fmt: skip
    days = pa.array([7, -14, 7, None], pa.int64())
    out = redact_notes(detectors, texts, shift_days=days, keep=frozenset({"DATE"})).to_pylist()
    assert out[0].startswith("Seen on 03/11/2021") and "12345678" not in out[0]
    assert "Smith" not in out[0]
    assert out[1] == "Follow up 2021-02-18."
    assert out[2] is None
    assert out[3] == "Seen on [DATE]."  # no offset (no patient): never the true date


def test_a_detected_date_time_shifts_whole() -> None:
    """A date-time is one DATE span (no date part left beside the time) and shifts as one."""
    detectors = DetectorSet.load()
    texts = pa.array(["Arrived 2021-03-04T10:22:00 by EMS.", "Exam date: 11/01/2018 @ 0033 |"])
    out = redact_notes(
        detectors, texts, shift_days=pa.array([7, 1], pa.int64()), keep=frozenset({"DATE"})
    ).to_pylist()
    assert out == ["Arrived 2021-03-11T10:22:00 by EMS.", "Exam date: 11/02/2018 @ 0033 |"]
    tagged = detectors.redact(texts).to_pylist()
    assert tagged == ["Arrived [DATE] by EMS.", "Exam date: [DATE] |"]
