"""Rebuilds of the systems imgpipe replaces, for the benchmarks only (services/imgpipe never imports them)."""
