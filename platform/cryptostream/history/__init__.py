"""Queries over the Parquet archive with embedded DuckDB (issue 21)."""
