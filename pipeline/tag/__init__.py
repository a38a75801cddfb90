"""tag-corpus and report: plan chunks of tweet dumps, tag them on workers, commit Parquet parts, render the report."""
