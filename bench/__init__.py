"""Benchmarks of imgpipe (and its Celery + Redis baseline); run them as modules from the repository
root, e.g. `.venv/bin/python -m bench.ingest`. docs/benchmarks.md has the figures and how they were made."""
