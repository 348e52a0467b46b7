"""Rebuild the README's demo pictures: `.venv/bin/python docs/images/make_demo_images.py`.

The demo's cat tasks through the local detect, generate and matte stages, as `make up` runs them:
the input is the JPEG the demo sends, each result is the matte stage's RGBA PNG, shown on a
checkerboard (where it is transparent) and scaled to the input's height, as a JPEG to stay small.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from imgpipe.samples import photo_jpeg
from imgpipe.stages.detect import DetectWork
from imgpipe.stages.generate import GenerateWork
from imgpipe.stages.matte import MatteWork
from imgpipe.stages.runner import StageWork, store_artifact
from imgpipe.stages.settings import StageSettings
from imgpipe.testing.objects import DictObjects
from imgpipe.v1 import task_pb2

HERE = Path(__file__).parent
TASKS = {"demo-watercolor.jpg": "a watercolor painting", "demo-pencil-sketch.jpg": "pencil sketch"}


def result(original: bytes, prompt: str) -> Image.Image:
    settings = StageSettings()
    works: dict[str, StageWork] = {
        "detect": DetectWork.from_settings(settings),
        "generate": GenerateWork.from_settings(settings),
        "matte": MatteWork.from_settings(settings),
    }
    objects = DictObjects()
    objects.put("demo/original", original, "image/jpeg")
    envelope = task_pb2.TaskEnvelope(task_id="demo", prompt=prompt)
    envelope.source.object_key = "demo/original"
    for name, work in works.items():
        envelope.artifacts[name].CopyFrom(store_artifact(objects, "demo", name, work.run(envelope, objects)))
    return Image.open(io.BytesIO(objects.get(envelope.artifacts["matte"].object_key))).convert("RGBA")


def on_checkerboard(image: Image.Image, cell: int = 12) -> Image.Image:
    board = Image.new("RGB", image.size, (255, 255, 255))
    grey = Image.new("RGB", (cell, cell), (214, 214, 214))
    for y in range(0, image.height, cell):
        for x in range((y // cell) % 2 * cell, image.width, 2 * cell):
            board.paste(grey, (x, y))
    board.paste(image, mask=image.getchannel("A"))
    return board


def main() -> None:
    original = photo_jpeg("chelsea")
    (HERE / "demo-input.jpg").write_bytes(original)  # exactly what the demo submits
    height = Image.open(HERE / "demo-input.jpg").height
    for name, prompt in TASKS.items():
        matte = result(original, prompt)
        width = round(matte.width * height / matte.height)
        shown = on_checkerboard(matte.resize((width, height), Image.Resampling.LANCZOS))
        shown.save(HERE / name, quality=85, optimize=True)


if __name__ == "__main__":
    main()
