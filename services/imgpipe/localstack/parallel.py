"""Run one task per component in threads: the servers start (and stop) concurrently."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_parallel(tasks: Mapping[str, Callable[[], T]]) -> tuple[dict[str, T], dict[str, Exception]]:
    """Run every task to completion (a failure cancels none); return results and errors by name."""
    results: dict[str, T] = {}
    errors: dict[str, Exception] = {}
    if not tasks:
        return results, errors
    with ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="stack") as pool:
        futures = {name: pool.submit(task) for name, task in tasks.items()}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as error:
                errors[name] = error
    return results, errors


def describe_errors(errors: Mapping[str, Exception]) -> str:
    return "; ".join(f"{name}: {error}" for name, error in errors.items())
