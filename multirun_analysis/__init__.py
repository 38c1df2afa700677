"""Reads sparsesweep run directories on disk (results.json, metrics.jsonl, ...) into pandas.
Never imports the trainer or torch, so it runs wherever the result files are."""
from multirun_analysis.load import load_runs

__all__ = ["load_runs"]
