"""Render the numbered SQL templates of one dialect from a spec.

Templates live in `templates/<dialect>/NN-name.sql.j2` (shipped in the wheel as
`clinipipe/_templates`). Every `{{ ... }}` must go through a quoting filter (`ident`, `qualify`,
`literal`, `pg_ident`, `pg_literal`) or be explicitly trusted SQL: `transpile` for the spec
author's own queries (DuckDB SQL, delivered in the target's grammar: `clinipipe.sql.spec_sql`),
`sql` for other trusted text. Anything else is a render error, so no value reaches SQL unescaped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2

from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.dialect import POSTGRES, Dialect, SpecSqlRefused
from clinipipe.sql.spec_sql import transpile as transpile_sql
from clinipipe.sql.spec_sql import transpile_spec

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "_templates"
_FILE = re.compile(r"^(?P<num>\d\d)-(?P<name>[a-z0-9-]+)\.sql\.j2$")
_HEADER = re.compile(r"^--\s*clinipipe:\s*(?P<pairs>.+)$", re.M)
_PUNCTUATION = re.compile(r"^[\s,;()]*$")
_CHECK = re.compile(r"^--\s*check:\s*(?P<message>.+)$", re.M)
_CONFIRM = re.compile(r"^--\s*confirm:\s*(?P<name>[a-z][a-z0-9-]*)(?::\s*(?P<why>.+))?$", re.M)

RunsOn = Literal["target", "source", "none"]


class RenderError(Exception):
    """A template could not be rendered (names the template and line)."""


class SqlText(str):
    """SQL that has been quoted or is trusted; the only thing `{{ }}` may print."""


@dataclass(frozen=True)
class Statement:
    """One statement of a rendered file, numbered from 1 within the file.

    `check` is set for a query that must return no rows; its rows are reported with the
    message when it does (used for source prerequisites such as `wal_level`).

    `confirm` names a confirmation the statement needs before it may run (a statement preceded
    by `-- confirm: <name>: <why>`, e.g. an irreversible retention lock); `confirm_why` says
    what it commits to. `confirmations_needed` collects them for deploy.
    """

    number: int
    sql: str
    check: str | None = None
    confirm: str | None = None
    confirm_why: str | None = None


@dataclass(frozen=True)
class RenderedFile:
    """A rendered template: `name` like `01-setup-environment.sql`, where it runs, its text."""

    name: str
    text: str
    runs_on: RunsOn
    requires: frozenset[str] = field(default_factory=frozenset)
    dialect: str = "postgres"
    """The SQL dialect of `text` (the target's, or postgres for files that run on the source)."""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def statements(self) -> list[Statement]:
        return split_sql(self.text, self.dialect)


def split_sql(text: str, dialect: str = "postgres") -> list[Statement]:
    """Split a script of `dialect` into statements (string-, comment- and `$$`-aware).

    sqlglot's tokenizer for the dialect finds the semicolons that end statements. A comment on
    the same line after a semicolon stays with the statement it follows; comments before a
    statement belong to it. A statement whose leading comments contain `-- check: <message>`
    becomes a check.
    """
    out: list[Statement] = []
    for chunk in _statement_chunks(text, dialect):
        if not _strip_comments(chunk):
            continue
        check = _CHECK.search(chunk)
        confirm = _CONFIRM.search(chunk)
        out.append(
            Statement(
                len(out) + 1,
                chunk.strip(),
                check["message"].strip() if check else None,
                confirm["name"] if confirm else None,
                (confirm["why"] or "").strip() or None if confirm else None,
            )
        )
    return out


def confirmations_needed(files: list[RenderedFile]) -> dict[str, list[str]]:
    """Confirmation name -> what each statement needing it commits to, over `files` in order
    (statements marked `-- confirm: <name>: <why>`). Deploy runs none of `files` until every
    name is confirmed by its flag (`--confirm-<name>`)."""
    needed: dict[str, list[str]] = {}
    for f in files:
        for st in f.statements:
            if st.confirm:
                needed.setdefault(st.confirm, []).append(f"{f.name}: {st.confirm_why or st.sql}")
    return needed


def _statement_chunks(text: str, dialect: str) -> list[str]:
    import sqlglot  # here: ~60 ms that commands which never split SQL need not pay
    from sqlglot.tokens import TokenType

    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(text)
    except sqlglot.errors.TokenError as exc:
        raise RenderError(f"cannot split the SQL into statements: {exc}") from None
    chunks: list[str] = []
    start = 0
    for token in tokens:
        if token.token_type != TokenType.SEMICOLON or token.end < start:
            continue
        end = token.end + 1
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        rest = text[end:line_end].strip()
        if not rest or rest.startswith("--"):
            end = line_end
        chunks.append(text[start:end])
        start = end
    chunks.append(text[start:])
    return chunks


def _strip_comments(sql: str) -> str:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return "\n".join(lines).strip().rstrip(";").strip()


def available_dialects() -> list[str]:
    return sorted(p.name for p in TEMPLATES_DIR.iterdir() if p.is_dir() and p.name[0] != "_")


def template_names(dialect: str) -> list[str]:
    folder = TEMPLATES_DIR / dialect
    if not folder.is_dir():
        raise RenderError(
            f"no templates for target '{dialect}' (have: {', '.join(available_dialects())})"
        )
    return sorted(p.name for p in folder.iterdir() if _FILE.match(p.name))


def _environment(
    dialect: Dialect, translations: dict[str, str] | None = None
) -> jinja2.Environment:
    """The Jinja environment of `dialect`. `translations` maps each spec query to its text in
    the dialect (`spec_sql.transpile_spec`); without it, `transpile` translates on the spot."""

    def transpile(value: Any) -> SqlText:
        text = str(value)
        if translations is not None and text in translations:
            return SqlText(translations[text])
        try:
            return SqlText(transpile_sql(text, dialect))
        except SpecSqlRefused as exc:
            raise RenderError(f"a query cannot be written for {dialect.name}: {exc}") from None

    def finalize(value: Any) -> Any:
        if isinstance(value, SqlText):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, jinja2.Undefined) and "inline if" in str(value._undefined_hint):
            return ""  # `{{ "," if not loop.last }}` on the last item
        if isinstance(value, str) and _PUNCTUATION.match(value):
            return value  # `{{ "," if not loop.last }}` and the like
        raise RenderError(
            f"unquoted value {type(value).__name__} in a template: pipe it through "
            "`ident`, `qualify`, `literal` or `sql`"
        )

    from clinipipe.sql.dialect import POSTGRES  # here: clinipipe.source imports clinipipe.sql

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        finalize=finalize,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ident"] = lambda v: SqlText(dialect.quote_ident(str(v)))
    env.filters["qualify"] = lambda parts: SqlText(dialect.qualify(*[str(p) for p in parts]))
    env.filters["literal"] = lambda v: SqlText(dialect.quote_literal(v))
    env.filters["pg_ident"] = lambda v: SqlText(POSTGRES.quote_ident(str(v)))
    env.filters["pg_literal"] = lambda v: SqlText(POSTGRES.quote_literal(v))
    env.filters["sql"] = lambda v: SqlText(str(v).strip().rstrip(";").strip())
    env.filters["transpile"] = transpile
    return env


def render(loaded: LoadedSpec, dialect: Dialect) -> list[RenderedFile]:
    """Render every template of `dialect` (`templates/<dialect.name>/`) in file-name order.

    The caller supplies the target's quoting rules (`clinipipe.targets.dialect_of`): this layer
    knows no warehouse. Pure: the output depends only on the spec and the templates. The spec's
    queries are translated first: one that cannot be is a `SpecError` at its file:line:col.
    """
    from clinipipe.sql.context import template_context

    name = dialect.name
    env = _environment(dialect, transpile_spec(loaded, dialect))
    context = template_context(loaded.spec, name)
    files: list[RenderedFile] = []
    for template_name in template_names(name):
        try:
            text = env.get_template(f"{name}/{template_name}").render(context)
        except jinja2.TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f"{template_name}:{line}" if line else template_name
            raise RenderError(f"{where}: {exc}") from None
        except RenderError as exc:
            raise RenderError(f"{template_name}: {exc}") from None
        header = _header(text)
        runs_on = header.get("runs_on", "target")
        if runs_on not in ("target", "source", "none"):
            raise RenderError(f"{template_name}: runs_on must be target, source or none")
        requires = frozenset(r for r in header.get("requires", "").split(",") if r)
        files.append(
            RenderedFile(
                template_name.removesuffix(".j2"),
                text,
                runs_on,  # type: ignore[arg-type]
                requires,
                POSTGRES.name if runs_on == "source" else name,
            )
        )
    return files


def _header(text: str) -> dict[str, str]:
    match = _HEADER.search(text)
    if not match:
        return {}
    pairs = (p.split("=", 1) for p in match["pairs"].split() if "=" in p)
    return {k.strip(): v.strip() for k, v in pairs}


def write_rendered(files: list[RenderedFile], out_dir: Path) -> list[Path]:
    """Write the rendered files into `out_dir` atomically per file (temp file + rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for f in files:
        target = out_dir / f.name
        tmp = target.with_suffix(".sql.tmp")
        tmp.write_text(f.text, encoding="utf-8")
        tmp.replace(target)
        written.append(target)
    return written
