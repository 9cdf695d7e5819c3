"""Run records (metrics.jsonl, summary.json, config.yaml) and what is read back from them."""
