"""The SQL of `clinipipe redact`, shared by every dialect: each research column as an expression
over its raw column, using the functions of template 06 (`_clinipipe.pseudonym`,
`safe_harbor_zip3`, ...). The defaults are spelled as DuckDB spells them.

`RedactSql` is the generic builder: one SELECT per table, the raw table aliased ``t`` and the
one-row key table (`KEY_TABLE`, created per session from the environment's key) aliased ``k``.
Dialects override the few expressions that differ (`SnowflakeRedactSql`).

Guarantees of the SELECT it builds (`select_sql`):

* It lists only the columns of the plan's output, each wrapped in its treatment; a column the
  plan drops is never read into the result, and no column is copied through unless its
  treatment is KEEP (`safe_harbor.plan_table` gives that only to columns the spec releases
  and to what a Limited Data Set may keep: never to an unclassified column).
* It is deterministic: the same raw rows, key, policy and as-of date give the same rows.
* Text to redact (``free_text`` notes, and unclassified text columns, fail closed) is selected
  raw under its own name, for the caller's Python redaction by the detectors (`reader_sql`,
  with the helper columns `HELPER_PREFIX*`); `select_sql` refuses a plan with such text, so
  it can only leave through that path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from clinipipe.phi.safe_harbor import AGE_CAP, ColumnPlan, TablePlan, Treatment
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.dialect import Dialect

KEY_TABLE = "_clinipipe_redaction_key"
HELPER_PREFIX = "__clinipipe_"
SHIFT_COLUMN = f"{HELPER_PREFIX}shift_days"
SHIFT_ALIAS = f"{HELPER_PREFIX}shift"
"""The per-patient offset map (CTE) of a table whose dates are shifted."""
NEW_PREFIX = "__clinipipe_new_"


def type_kind(data_type: str) -> str:
    """'date', 'timestamp', 'timestamptz', 'text' or 'other' for a type name as reported."""
    t = data_type.upper()
    if "WITH TIME ZONE" in t or t in ("TIMESTAMPTZ", "TIMESTAMP_TZ"):
        return "timestamptz"
    if t.startswith("TIMESTAMP") or t == "DATETIME":
        return "timestamp"
    if t == "DATE":
        return "date"
    if t.startswith(("VARCHAR", "TEXT", "STRING", "CHAR")):
        return "text"
    return "other"


class RedactSql:
    """Builds the redaction SQL of one dialect: DuckDB's spellings here, the few expressions that
    differ overridden per dialect (`clinipipe.targets.snowflake.redact.SnowflakeRedactSql`)."""

    def __init__(self, dialect: Dialect, *, database: str | None = None) -> None:
        self.dialect = dialect
        self.database = database

    # --- names ----------------------------------------------------------------------------------

    def qualify(self, *parts: str) -> str:
        return self.dialect.qualify(*([self.database] if self.database else []), *parts)

    def function(self, name: str) -> str:
        """A function of template 06 (in the control schema)."""
        return self.qualify(CONTROL_SCHEMA, name)

    def key_table(self) -> str:
        return KEY_TABLE

    def ident(self, name: str) -> str:
        return self.dialect.quote_ident(name)

    @staticmethod
    def quote_names(names: Sequence[str]) -> list[str]:
        """Names as DuckDB quotes them (for EXCLUDE lists)."""
        return ['"' + n.replace('"', '""') + '"' for n in names]

    # --- expressions ----------------------------------------------------------------------------

    def text(self, expr: str) -> str:
        return f"CAST({expr} AS VARCHAR)"

    key_arguments = "k.ipad, k.opad"
    """How the key table's columns are passed to `pseudonym` and `shift_days`."""

    def in_utc(self, expr: str) -> str:
        """A timestamp with a zone as the wall-clock time in UTC."""
        return f"timezone('UTC', {expr})"

    def pseudonym(self, expr: str, namespace: str) -> str:
        q = self.dialect.quote_literal
        return (
            f"{self.function('pseudonym')}({self.text(expr)}, {q(namespace)}, {self.key_arguments})"
        )

    def shift_days(self, expr: str) -> str:
        return f"{self.function('shift_days')}({self.text(expr)}, {self.key_arguments})"

    def utc_date(self, expr: str, data_type: str) -> str:
        """The calendar date of a date-like value (timestamps with a zone: in UTC)."""
        kind = type_kind(data_type)
        if kind == "timestamptz":
            return f"CAST({self.in_utc(expr)} AS DATE)"
        if kind in ("timestamp", "date"):
            return f"CAST({expr} AS DATE)"
        return f"TRY_CAST({expr} AS DATE)"

    def year(self, expr: str, data_type: str) -> str:
        if type_kind(data_type) == "timestamptz":
            return self.utc_year(expr)
        return f"CAST(year({self.utc_date(expr, data_type)}) AS INTEGER)"

    def utc_year(self, expr: str) -> str:
        """The calendar year in UTC of a timestamp with a zone. DuckDB: the year of its epoch
        microseconds (the UTC instant it stores) read as a plain timestamp: equal to the year of
        `in_utc` for every value (NULL and +-infinity give NULL; BC years included) and about
        ten times cheaper than converting through ICU's time zones, whatever the session's
        TimeZone (tests/test_redact_columns.py compares both)."""
        return f"CAST(year(make_timestamp(epoch_us({expr}))) AS INTEGER)"

    def age_at(self, birth: str, data_type: str, as_of: str) -> str:
        """Whole years from the birth date to the as-of date. A birthday on 29 February counts
        as reached on 28 February in common years (the earlier day: suppression never late)."""
        return f"date_sub('year', {self.utc_date(birth, data_type)}, DATE {as_of})"

    def shifted(self, expr: str, data_type: str, days: str) -> str:
        kind = type_kind(data_type)
        if kind in ("timestamp", "timestamptz"):
            return f"({expr} + to_days(CAST({days} AS INTEGER)))"
        if kind == "date":
            return f"({expr} + CAST({days} AS INTEGER))"
        return f"(TRY_CAST({expr} AS DATE) + CAST({days} AS INTEGER))"

    def zip3(self, expr: str) -> str:
        return f"{self.function('safe_harbor_zip3')}({self.text(expr)})"

    def zip5(self, expr: str) -> str:
        return f"{self.function('zip5')}({self.text(expr)})"

    def age_cap(self, expr: str) -> str:
        return f"{self.function('safe_harbor_age')}({expr})"

    def column(self, plan: ColumnPlan, as_of: str | None, mapped: Mapping[str, str]) -> list[str]:
        """The output expression(s) of one column, each ending in `AS <name>`. `mapped`: the
        columns whose pseudonym comes from a per-value map (name -> the map's alias)."""
        name = self.ident(plan.name)
        raw = f"t.{name}"
        tr = plan.treatment
        if tr is Treatment.DROP:
            return []
        if tr in (Treatment.KEEP, Treatment.TEXT):
            return [f"{raw} AS {name}"]
        if tr is Treatment.PSEUDONYM:
            assert plan.namespace is not None
            if plan.name in mapped:
                return [f"{mapped[plan.name]}.p AS {name}"]
            return [f"{self.pseudonym(raw, plan.namespace)} AS {name}"]
        if tr is Treatment.YEAR:
            return [f"{self.year(raw, plan.data_type)} AS {name}"]
        if tr is Treatment.AGE_CAP:
            return [f"{self.age_cap(raw)} AS {name}"]
        if tr is Treatment.ZIP3:
            return [f"{self.zip3(raw)} AS {name}"]
        if tr is Treatment.ZIP5:
            return [f"{self.zip5(raw)} AS {name}"]
        shift = f"{SHIFT_ALIAS}.p"
        if tr is Treatment.SHIFT:
            return [f"{self.shifted(raw, plan.data_type, shift)} AS {name}"]
        assert as_of is not None, "birth dates need the as-of date"
        age = self.age_at(raw, plan.data_type, as_of)
        if tr is Treatment.BIRTH_YEAR:
            kept = self.year(raw, plan.data_type)
        else:  # SHIFT_BIRTH
            kept = self.shifted(raw, plan.data_type, shift)
        over = f"{age} > {AGE_CAP - 1}"
        return [
            f"CASE WHEN {over} THEN NULL ELSE {kept} END AS {name}",
            f"CAST(CASE WHEN {over} THEN {AGE_CAP} ELSE {age} END AS INTEGER) "
            f"AS {self.ident(plan.name + '_age')}",
        ]

    # --- statements -----------------------------------------------------------------------------

    @staticmethod
    def shifts(plan: TablePlan) -> bool:
        return any(c.treatment in (Treatment.SHIFT, Treatment.SHIFT_BIRTH) for c in plan.columns)

    @staticmethod
    def mapped_columns(plan: TablePlan) -> list[ColumnPlan]:
        """Join keys other than the table's own primary key (patient_id in labs...): their
        values repeat, so each distinct value is pseudonymized once and joined back, instead of
        one HMAC (four SHA-256 blocks) per row."""
        own = plan.primary_key[0] if len(plan.primary_key) == 1 else None
        return [c for c in plan.columns
                if c.treatment is Treatment.PSEUDONYM and c.join_key and c.name != own]  # fmt: skip

    def _map(self, alias: str, raw_table: str, column: str, value: str) -> tuple[str, str]:
        """A CTE of (v, p): each distinct non-NULL value of `column` and `value` computed over
        it (`v`), and the LEFT JOIN that brings `p` to every row (NULL stays NULL)."""
        ident = self.ident(column)
        cte = (
            f"{alias} AS (SELECT d.v, {value} AS p FROM (SELECT DISTINCT {ident} AS v "
            f"FROM {raw_table} WHERE {ident} IS NOT NULL) d CROSS JOIN {self.key_table()} k)"
        )
        return cte, f" LEFT JOIN {alias} ON {alias}.v = t.{ident}"

    def source(self, plan: TablePlan, raw_table: str, *, shift: bool = False) -> tuple[str, str]:
        """(WITH list, FROM clause): the raw table `t` with the key table `k`, the per-value
        pseudonym maps of `mapped_columns`, and (for date shifts, or `shift`) the map of the
        patient's offset `SHIFT_ALIAS`."""
        ctes, joins = [], []
        for i, c in enumerate(self.mapped_columns(plan)):
            assert c.namespace is not None
            alias = f"{HELPER_PREFIX}m{i}"
            cte, join = self._map(alias, raw_table, c.name, self.pseudonym("d.v", c.namespace))
            ctes.append(cte)
            joins.append(join)
        if (shift or self.shifts(plan)) and plan.patient_key is not None:
            cte, join = self._map(SHIFT_ALIAS, raw_table, plan.patient_key, self.shift_days("d.v"))
            ctes.append(cte)
            joins.append(join)
        with_list = f"WITH {', '.join(ctes)} " if ctes else ""
        return with_list, f"{raw_table} t CROSS JOIN {self.key_table()} k{''.join(joins)}"

    def _mapped(self, plan: TablePlan) -> dict[str, str]:
        return {c.name: f"{HELPER_PREFIX}m{i}" for i, c in enumerate(self.mapped_columns(plan))}

    def select_sql(self, plan: TablePlan, raw_table: str, as_of: str | None) -> str:
        """The research rows of a table without free text, entirely in SQL."""
        if plan.notes:
            raise ValueError("a table with free text is read with reader_sql, not select_sql")
        mapped = self._mapped(plan)
        columns = [e for c in plan.columns for e in self.column(c, as_of, mapped)]
        with_list, source = self.source(plan, raw_table)
        return f"{with_list}SELECT {', '.join(columns)} FROM {source}"

    def reader_sql(
        self,
        plan: TablePlan,
        raw_table: str,
        as_of: str | None,
        patients_table: str | None,
        patient_pk: str | None,
        known: Mapping[str, str],
        *,
        shift_text: bool,
    ) -> str:
        """The rows of a table with free text for Python redaction: the research columns (the
        notes still raw, under their names), then helper columns: the patient's date offset
        (`SHIFT_COLUMN`, with `shift_text` and a patient key) and, for record linkage, the
        patient's known identifiers as text (`HELPER_PREFIX` + column), joined on the patient
        key."""
        mapped = self._mapped(plan)
        columns = [e for c in plan.columns for e in self.column(c, as_of, mapped)]
        shift = shift_text and plan.patient_key is not None
        with_list, source = self.source(plan, raw_table, shift=shift)
        if shift:
            columns.append(f"{SHIFT_ALIAS}.p AS {self.ident(SHIFT_COLUMN)}")
        if plan.patient_key is not None and patients_table is not None and known:
            assert patient_pk is not None
            columns += [
                f"{self.text('p.' + self.ident(c))} AS {self.ident(HELPER_PREFIX + c)}"
                for c in known
            ]
            source += (
                f" LEFT JOIN {patients_table} p "
                f"ON p.{self.ident(patient_pk)} = t.{self.ident(plan.patient_key)}"
            )
        return f"{with_list}SELECT {', '.join(columns)} FROM {source}"

    def fingerprint_sql(self, raw_table: str, columns: Sequence[str]) -> str:
        """One row: the row count and an order-independent digest of every row's values."""
        listed = ", ".join(self.ident(c) for c in columns)
        return (
            "SELECT count(*), COALESCE(bit_xor(h), 0), COALESCE(sum(CAST(h AS HUGEINT)), 0) "
            f"FROM (SELECT hash({listed}) AS h FROM {raw_table})"
        )

    def key_table_sql(self) -> str:
        """Creates the session's key table from the parameters $ipad, $opad (never inlined)."""
        return (
            f"CREATE OR REPLACE TEMP TABLE {KEY_TABLE} AS "
            "SELECT CAST($ipad AS BLOB) AS ipad, CAST($opad AS BLOB) AS opad"
        )
