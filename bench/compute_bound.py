"""The compute bound: the three stages' own work on N tasks in one process, no Kafka, S3 or Postgres.

Runs the very StageWork objects the services run (detect, generate, matte with their default local
backends), handing artifacts between them in memory. Usage:

    .venv/bin/python bench/compute_bound.py --tasks 50 [--workers 2]

Prints JSON: tasks, wall seconds, tasks/s, per-stage mean seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from imgpipe.objects import ObjectStore
from imgpipe.samples import photo_jpeg
from imgpipe.stages.detect import DetectWork
from imgpipe.stages.generate import GenerateWork
from imgpipe.stages.matte import MatteWork
from imgpipe.stages.runner import StageWork
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2

PROMPTS = ("a watercolor painting", "pencil sketch", "cartoon", "vintage sepia photo", "pop art")


class MemoryObjects(ObjectStore):
    """Objects in a dict: the benchmark leaves storage out on purpose."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._objects[key] = data

    def get(self, key: str) -> bytes:
        return self._objects[key]


class StageChain:
    """detect -> generate -> matte as the services run them, artifacts handed on in memory."""

    def __init__(self) -> None:
        settings = StageSettings()
        self.stages: dict[str, StageWork] = {
            "detect": DetectWork.from_settings(settings),
            "generate": GenerateWork.from_settings(settings),
            "matte": MatteWork.from_settings(settings),
        }

    def run(self, index: int, original: bytes) -> dict[str, float]:
        """One task; the seconds each stage took."""
        objects = MemoryObjects()
        task_id = f"bench-{index}"
        objects.put(f"{task_id}/original", original, "image/jpeg")
        envelope = task_pb2.TaskEnvelope(task_id=task_id, prompt=PROMPTS[index % len(PROMPTS)])
        envelope.source.object_key = f"{task_id}/original"
        seconds = {}
        for name, work in self.stages.items():
            started = time.perf_counter()
            output = work.run(envelope, objects)
            seconds[name] = time.perf_counter() - started
            key = f"{task_id}/{name}"
            objects.put(key, output.data, output.content_type)
            envelope.artifacts[name].object_key = key
        return seconds


def run_tasks(count: int, offset: int = 0) -> dict[str, list[float]]:
    chain, original = StageChain(), photo_jpeg()
    seconds: dict[str, list[float]] = {name: [] for name in chain.stages}
    for i in range(offset, offset + count):
        for name, took in chain.run(i, original).items():
            seconds[name].append(took)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="processes (the machine's cores bound it)")
    args = parser.parse_args()
    run_tasks(1)  # warm-up: imports, cascade loading
    share = [
        args.tasks // args.workers + (1 if i < args.tasks % args.workers else 0) for i in range(args.workers)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        parts = list(pool.map(run_tasks, share, [sum(share[:i]) for i in range(args.workers)]))
    wall = time.perf_counter() - started
    per_stage = {name: [s for part in parts for s in part[name]] for name in parts[0]}
    print(
        json.dumps(
            {
                "tasks": args.tasks,
                "workers": args.workers,
                "wall_seconds": round(wall, 2),
                "tasks_per_second": round(args.tasks / wall, 2),
                "mean_stage_seconds": {k: round(statistics.mean(v), 4) for k, v in per_stage.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
