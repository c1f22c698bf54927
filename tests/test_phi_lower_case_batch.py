"""Rows typed all in lower case are judged in one pass over the batch (a column of short
lower-case values is common: "venous blood", "daily"), with exactly the findings each row
gets on its own: no rule reaches across a row separator."""

from __future__ import annotations

import pyarrow as pa

from clinipipe.phi import DetectorSet

ROWS = [
    "please thank",  # with the next row's first word this would be the cue "thank you"
    "you xquilab today",
    "thank you xquilab",  # the cue inside one row: a name
    "venous blood",
    "from: tony black",
    None,
    "my son",
    "kara",
    "Seen by Dr. Smith",  # not lower case: ends the stretch
    "tony d. black",
]


def _spans(found: pa.Table) -> list[tuple[int, int, int, str]]:
    return list(
        zip(
            found["row"].to_pylist(),
            found["start"].to_pylist(),
            found["end"].to_pylist(),
            found["category"].to_pylist(),
            strict=True,
        )
    )


def test_a_batch_of_lower_case_rows_finds_what_each_row_finds_alone() -> None:
    detectors = DetectorSet.load()
    together = _spans(detectors.find(ROWS))
    alone = [
        (row, start, end, category)
        for row, text in enumerate(ROWS)
        for _, start, end, category in _spans(detectors.find([text]))
    ]
    assert together == alone
    names = {(r, ROWS[r][s:e]) for r, s, e, c in together if c == "NAME"}
    assert (2, "xquilab") in names and (4, "tony black") in names and (7, "kara") in names
    assert not any(r == 1 for r, _ in names)  # "thank" | "you xquilab": no cue across rows
