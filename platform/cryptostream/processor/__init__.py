"""raw.trades -> Redis materialized views, each record's effect applied exactly once."""
