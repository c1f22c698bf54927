"""The typed pipeline spec (`clinipipe.yaml`). Unknown keys are rejected everywhere.

Sections filled in by later work (`phi`, `backup`, `cost`, `dashboards`, and the details of
`dynamic_tables` / `interactive_tables`) are reserved here with the settings the SQL templates
already use.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from clinipipe.secrets import mask_dsn
from clinipipe.spec.dsn import dsn_problem
from clinipipe.spec.interpolate import has_reference
from clinipipe.spec.types import (
    PHI_CATEGORIES,
    PHI_VALIDATOR_NAMES,
    Duration,
    DurationField,
    Identifier,
    PhiClass,
    WarehouseSize,
)

SNOWFLAKE_MIN_LAG_SECONDS = 60
RESTRICTED_ZIP3 = [
    "036",
    "059",
    "063",
    "102",
    "203",
    "556",
    "692",
    "790",
    "821",
    "823",
    "830",
    "831",
    "878",
    "879",
    "884",
    "890",
    "893",
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_lag(value: Duration | None, info: ValidationInfo) -> Duration | None:
    """Snowflake refuses a TARGET_LAG under 60 s (validation context `target_type`)."""
    context = info.context or {}
    seconds = value.seconds if value is not None else None
    snowflake = context.get("target_type") == "snowflake"
    if snowflake and seconds is not None and seconds < SNOWFLAKE_MIN_LAG_SECONDS:
        raise PydanticCustomError(
            "target_lag",
            "TARGET_LAG of {seconds} s is below Snowflake's minimum of 60 seconds; "
            "use '1 minute' or more",
            {"seconds": f"{seconds:g}"},
        )
    return value


class TableSpec(Model):
    """A source table to replicate. CDC applies changes by primary key; a table without one
    (an event log, an audit table) is replicated only as `append_only`."""

    name: Identifier
    schema_: Identifier = Field("public", alias="schema")
    primary_key: list[Identifier] = Field(default_factory=list)
    append_only: bool = False
    """The source table has no primary key: inserts and truncates are replicated; an update
    or a delete pauses the table (it cannot be matched to a warehouse row). The source table
    needs REPLICA IDENTITY FULL, or PostgreSQL refuses updates and deletes on it once it is
    in the publication."""
    columns: dict[Identifier, PhiClass] = Field(default_factory=dict)
    """PHI classification per column. An unlisted column has no PHI class: the scanners look
    for PHI leaking into it, and a research extract (`clinipipe redact`) fails closed on it:
    text is scrubbed by the detectors, dates become their year, anything else is dropped,
    unless the column is listed in `release`."""
    release: list[Identifier] = Field(default_factory=list)
    """Columns known to hold no PHI (codes, units, lab values...) that a research extract copies
    as they are. Each must be a column of the source table that `columns` does not classify
    and not a join key (ids are pseudonymized in every policy); the redact manifest lists them.
    Released text columns are still scanned for leaks, by `clinipipe scan` and by redact's own
    final scan."""

    @property
    def qualified(self) -> str:
        return f"{self.schema_}.{self.name}"


class SourceSpec(Model):
    dsn: str
    """libpq DSN. Put it in the environment (`${CLINIPIPE_SOURCE_DSN}`): it may hold a password."""
    publication: Identifier = "clinipipe_pub"
    slot: Identifier = "clinipipe_slot"
    lag_warning_mb: Annotated[int, Field(ge=1)] = 1024
    """`cdc status` warns (exit 3) when the slot holds back more WAL than this."""
    tables: Annotated[list[TableSpec], Field(min_length=1)]

    @field_validator("dsn")
    @classmethod
    def _no_literal_password(cls, value: str, info: ValidationInfo) -> str:
        """A password must come from the environment: reject one written into the spec."""
        literal = (info.context or {}).get("literal_dsn", value)
        if mask_dsn(literal) != literal and not has_reference(literal):
            raise PydanticCustomError(
                "secret_in_spec",
                "the DSN holds a password written into the spec; put the whole DSN in an "
                "environment variable and write dsn: ${CLINIPIPE_SOURCE_DSN}",
            )
        return value

    @field_validator("dsn")
    @classmethod
    def _plausible_dsn(cls, value: str, info: ValidationInfo) -> str:
        """Refuse a DSN that cannot work (empty, not postgresql://, the .env.example
        placeholder) before anything connects; the message never quotes the DSN."""
        problem = dsn_problem(value, (info.context or {}).get("literal_dsn"))
        if problem is not None:
            raise PydanticCustomError("dsn", "{problem}", {"problem": problem})
        return value


class DuckDBTarget(Model):
    type: Literal["duckdb"]
    path: str
    encryption_key_env: Identifier | None = None
    """Name of the environment variable (or `.env` entry) holding the key that encrypts the
    warehouse file, its serving files and its backups at rest (never the key itself). Unset:
    nothing is encrypted."""


class SnowflakeTarget(Model):
    type: Literal["snowflake"]
    account: str
    user: str
    role: Identifier = "CLINIPIPE_ROLE"
    """The pipeline's role: every session uses it, and it owns every object clinipipe creates
    in the database (tables, dynamic and interactive tables, functions, views, policies)."""
    admin_role: Identifier = "SYSADMIN"
    """The role `deploy` uses for the account-level setup (database, schemas, warehouses, roles,
    grants); `role` is granted to it, so it (and the roles above it) control what `role` owns."""
    database: Identifier = "CLINIPIPE"
    schema_: Identifier = Field("RAW", alias="schema")
    authenticator: Literal["snowflake", "externalbrowser", "snowflake_jwt"] = "snowflake"
    password_env: Identifier = "SNOWFLAKE_PASSWORD"
    """Name of the environment variable holding the password (never the password itself)."""
    private_key_file_env: Identifier = "SNOWFLAKE_PRIVATE_KEY_FILE"
    """`authenticator: snowflake_jwt`: the variable holding the path of the PEM private key."""
    private_key_passphrase_env: Identifier = "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"
    """Name of the variable holding the passphrase of an encrypted private key (unset: the key
    is not encrypted). Never the passphrase itself."""


Target = Annotated[DuckDBTarget | SnowflakeTarget, Field(discriminator="type")]


class Warehouse(Model):
    name: Identifier
    size: WarehouseSize
    auto_suspend: Annotated[int, Field(ge=0)] = 60
    """Seconds idle before suspending (0 = never; Snowflake bills while a warehouse runs)."""


class Warehouses(Model):
    initialization: Warehouse = Warehouse(name="CLINIPIPE_INIT_WH", size="X6LARGE", auto_suspend=60)
    incremental: Warehouse = Warehouse(name="CLINIPIPE_CDC_WH", size="XSMALL", auto_suspend=60)
    interactive: Warehouse = Warehouse(name="CLINIPIPE_SERVE_WH", size="XSMALL", auto_suspend=86400)


class DynamicTable(Model):
    name: Identifier
    target_lag: DurationField
    refresh_mode: Literal["auto", "full", "incremental"] = "auto"
    refresh_key: Identifier | None = None
    sql: str
    comment: str | None = None

    _lag = field_validator("target_lag")(_check_lag)


class InteractiveTable(Model):
    name: Identifier
    from_: Identifier | None = Field(None, alias="from")
    sql: str | None = None
    cluster_by: Annotated[list[Identifier], Field(min_length=1)]
    target_lag: DurationField | None = None

    _lag = field_validator("target_lag")(_check_lag)


class ClassificationSpec(Model):
    sample_count: Annotated[int, Field(ge=1, le=10000)] = 1000
    auto_tag: bool = True


# --- PHI scan alerts (clinipipe scan / cdc start) ------------------------------------------------

Severity = Literal["low", "medium", "high"]


class PhiAlertsSpec(Model):
    """Where `cdc start` sends an alert when a batch holds PHI where it must not be.

    Secrets are named, never written here: the webhook URL (it often carries a token) and the
    PagerDuty routing key are read from the environment variables given, at send time.
    """

    webhook_url_env: Identifier = "CLINIPIPE_PHI_WEBHOOK_URL"
    """Variable holding the webhook URL (for `pagerduty`, unset means PagerDuty's Events API)."""
    format: Literal["json", "pagerduty"] = "json"
    routing_key_env: Identifier = "PAGERDUTY_ROUTING_KEY"
    """Variable holding the PagerDuty integration (routing) key; used by `format: pagerduty`."""
    min_severity: Severity = "low"
    """Findings below this severity land in the findings table but raise no alert."""
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    """Attempts after the first, with exponential backoff, on a 5xx, 429 or network error."""
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    """Alerts waiting to be sent; when full, new alerts are dropped (and counted), never CDC."""


# --- end PHI scan alerts -----------------------------------------------------------------------


class PhiPattern(Model):
    """A custom PHI detector (clinipipe.phi.detectors): a named regex of one PHI category."""

    name: Identifier
    category: str
    regex: str
    """Python regex; a group named `phi` marks the PHI span (the rest is context)."""
    severity: Literal["low", "medium", "high"] = "medium"
    confidence: Annotated[float, Field(gt=0, le=1)] = 0.9
    context: list[str] = Field(default_factory=list)
    """Words that raise confidence when they occur within 40 characters before a match."""
    context_required: bool = False
    validator: str | None = None
    prefilter: str | None = None
    """RE2 regex matching every text `regex` can match in (default: `regex` itself)."""

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value.upper() not in PHI_CATEGORIES:
            raise PydanticCustomError(
                "phi_category",
                "unknown PHI category '{value}'; categories are {categories}",
                {"value": value[:40], "categories": ", ".join(PHI_CATEGORIES)},
            )
        return value.upper()

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import re

        try:
            re.compile(value)
        except re.error as exc:
            raise PydanticCustomError(
                "regex", "not a valid regex: {error}", {"error": str(exc)}
            ) from None
        return value

    @field_validator("validator")
    @classmethod
    def _known_validator(cls, value: str | None) -> str | None:
        if value is not None and value not in PHI_VALIDATOR_NAMES:
            raise PydanticCustomError(
                "validator",
                "unknown validator '{value}'; validators are {names}",
                {"value": value[:40], "names": ", ".join(sorted(PHI_VALIDATOR_NAMES))},
            )
        return value


class PhiSpec(Model):
    research_schema: Identifier = "research"
    deidentified_schemas: list[Identifier] = Field(default_factory=lambda: ["research"])
    hmac_key_env: Identifier = "CLINIPIPE_HMAC_KEY"
    restricted_zip3: list[Annotated[str, Field(pattern=r"^\d{3}$")]] = Field(
        default_factory=lambda: list(RESTRICTED_ZIP3)
    )
    """Three-digit ZIP prefixes with 20,000 people or fewer (HHS guidance, 2000 Census)."""
    classification: ClassificationSpec = ClassificationSpec()
    # PHI scan (clinipipe scan / cdc start)
    alerts: PhiAlertsSpec | None = None
    """Webhook alerts from the scanners `cdc start` runs on every batch (none when absent)."""
    watch: list[Identifier] | None = None
    """Source tables `cdc start` scans; default: every table with an unclassified text column."""
    fail_on: Severity = "low"
    """`clinipipe scan` exits 3 when a finding reaches this severity (--fail-on overrides)."""
    patterns: list[PhiPattern] = Field(default_factory=list)
    """Custom detectors added to the built-in rules (a built-in of the same name is replaced)."""


class BackupSpec(Model):
    store: str = "backups"
    """Where `clinipipe backup` writes: a local folder (relative to the spec), or
    `s3://bucket/prefix` (S3 Object Lock; needs the `s3` extra)."""
    policy_name: Identifier = "clinipipe_backup_policy"
    retention_days: Annotated[int, Field(ge=1)] = 2555
    """Each backup is kept at least this long (retain_until = created_at + retention_days)."""
    retention_lock: bool = Field(False, validation_alias=AliasChoices("retention_lock", "lock"))
    """WORM: nothing deletes a backup before retain_until, and the retention of later backups
    cannot be shortened (also spelled `lock:`). Opt-in (irreversible): off unless the spec says
    so; on Snowflake, deploy also needs `--confirm-retention-lock` to create the locked policy."""
    schedule: str = "24 HOUR"
    schemas: list[Identifier] = Field(default_factory=lambda: ["raw"])


class CostAlertsSpec(Model):
    """Where cost anomalies are sent (the same webhook mechanism as `phi.alerts`; the URL and
    the routing key are read from the environment variables named here, at send time)."""

    webhook_url_env: Identifier = "CLINIPIPE_COST_WEBHOOK_URL"
    format: Literal["json", "pagerduty"] = "json"
    routing_key_env: Identifier = "PAGERDUTY_ROUTING_KEY"
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 100


class CostSpec(Model):
    edition: Literal["standard", "enterprise", "business_critical"] = "enterprise"
    credit_price_usd: Annotated[float, Field(gt=0)] = 3.0
    monthly_budget_credits: Annotated[float, Field(gt=0)] | None = None
    """`cost anomalies` flags a month-to-date forecast above this (none when absent)."""
    max_job_credits: Annotated[float, Field(gt=0)] | None = None
    """`cost anomalies` flags a running job whose projected cost passes this (none when absent)."""
    anomaly_threshold: Annotated[float, Field(gt=0)] = 5.0
    """Robust z-score above which a day's spend is a spike (hourly: this + 0.5); 5 is what
    benchmarks/cost_anomaly_eval.py measured (3.5 flagged too many normal days)."""
    alerts: CostAlertsSpec | None = None
    """Webhook alerts for open cost anomalies (none when absent)."""


# --- verify (issue 19) ---------------------------------------------------------------------------


class VerifyAlertsSpec(CostAlertsSpec):
    """Where a scheduled verify that found differences is reported (the same webhook mechanism
    as `phi.alerts` and `cost.alerts`; names and counts only, never values)."""

    webhook_url_env: Identifier = "CLINIPIPE_VERIFY_WEBHOOK_URL"


class VerifySpec(Model):
    """`verify:` (absent: `clinipipe verify` only runs when asked)."""

    every: DurationField | None = None
    """`cdc start` runs a sampled verify this often (e.g. `1 hour`); none when absent."""
    sample: Annotated[float, Field(gt=0, le=100)] = 10.0
    """Percent of each table's key ranges a scheduled run checks."""
    alerts: VerifyAlertsSpec | None = None
    """Webhook alert when a scheduled run finds differences (none when absent)."""

    @field_validator("every")
    @classmethod
    def _every(cls, value: Duration | None) -> Duration | None:
        if value is not None and value.seconds is None:
            raise PydanticCustomError("duration", "verify.every needs a duration, not downstream")
        return value


# --- end verify ----------------------------------------------------------------------------------


class Dashboard(Model):
    name: Identifier
    sql: str
    params: dict[Identifier, Literal["int", "bigint", "text", "date", "timestamp"]] = Field(
        default_factory=dict
    )
    description: str | None = None


# --- access control (issue 16: roles from the spec) ---------------------------------------------

SchemaRole = Literal["raw", "derived", "serving", "research", "control"]
"""A warehouse schema by its role (`clinipipe.spec.schemas.schema_names`)."""


class AccessRole(Model):
    """One persona's privileges. Snowflake renders them (templates/snowflake/10-access-control);
    DuckDB has no roles: there the access boundary is the file (docs/COMPLIANCE_MAPPING.md)."""

    role: Identifier | None = None
    """The Snowflake role name (default: the pipeline role + `_` + the persona, upper case)."""
    read: list[SchemaRole] = Field(default_factory=list)
    """Schemas whose tables and dynamic tables (present and future) the role may SELECT."""
    write: list[SchemaRole] = Field(default_factory=list)
    """Schemas whose tables the role may change (INSERT, UPDATE, DELETE, TRUNCATE) and whose
    dynamic tables it may operate (refresh, suspend, resume)."""
    tables: list[str] = Field(default_factory=list)
    """Single tables the role may SELECT, written `<schema role>.<table>` (e.g.
    `serving.census_dashboard`), besides whole schemas in `read`."""
    warehouses: list[Literal["initialization", "incremental", "interactive"]] = Field(
        default_factory=list
    )
    phi_visible: Literal["all"] | list[PhiClass] = Field(default_factory=list)
    """Which PHI the role sees unmasked: `all`, or a list of PHI classes. Raw columns are masked
    by class for every other role (NULL; templates/snowflake/10-access-control); columns the spec
    does not classify are masked too unless classified `none` or released. `all` is required for
    a role reading derived or serving tables (no masking policy there) or with `deploy`."""
    deploy: bool = False
    """Granted the pipeline role itself (it owns every object: deploy, alter, drop)."""


class AccessSpec(Model):
    """`access:` (absent: only the pipeline role and 01's reader roles, as before)."""

    roles: dict[Identifier, AccessRole] = Field(default_factory=dict)
    """Persona -> privileges, e.g. clinician, researcher, auditor."""


# --- end access control -------------------------------------------------------------------------


class Spec(Model):
    """A whole pipeline: where data comes from, where it goes, and what runs on the way."""

    version: Literal[1]
    name: Identifier
    source: SourceSpec
    target: Target
    warehouses: Warehouses = Warehouses()
    dynamic_tables: list[DynamicTable] = Field(default_factory=list)
    interactive_tables: list[InteractiveTable] = Field(default_factory=list)
    phi: PhiSpec = PhiSpec()
    backup: BackupSpec = BackupSpec()
    cost: CostSpec = CostSpec()
    verify: VerifySpec = VerifySpec()
    dashboards: list[Dashboard] = Field(default_factory=list)
    access: AccessSpec | None = None
    """Roles per persona, grants and masking policies (none when absent)."""
