"""SQL: the Jinja environment, rendering of the numbered templates per dialect, quoting."""

from clinipipe.sql.render import RenderedFile, RenderError, Statement, render, split_sql

__all__ = ["RenderError", "RenderedFile", "Statement", "render", "split_sql"]
