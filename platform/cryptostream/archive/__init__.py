"""The archive sink: raw.trades -> Parquet, atomically, exactly once (issue 21)."""
