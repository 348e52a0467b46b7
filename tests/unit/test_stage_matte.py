"""The matte stage on the demo's tasks: chelsea through the local detect, generate and matte stages."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.samples import photo_jpeg
from imgpipe.stages.detect import DetectWork
from imgpipe.stages.generate import GenerateWork
from imgpipe.stages.matte import MatteWork
from imgpipe.stages.runner import StageWork, store_artifact
from imgpipe.stages.settings import StageSettings
from imgpipe.testing.objects import DictObjects
from imgpipe.v1 import task_pb2

pytestmark = pytest.mark.unit

REFERENCE = Path(__file__).parents[1] / "data" / "matte" / "chelsea_reference.png"


def run_task(prompt: str, settings: StageSettings) -> tuple[task_pb2.TaskEnvelope, DictObjects]:
    works: dict[str, StageWork] = {
        "detect": DetectWork.from_settings(settings),
        "generate": GenerateWork.from_settings(settings),
        "matte": MatteWork.from_settings(settings),
    }
    objects = DictObjects()
    objects.put("t/original", photo_jpeg("chelsea"), "image/jpeg")
    envelope = task_pb2.TaskEnvelope(task_id="t", prompt=prompt)
    envelope.source.object_key = "t/original"
    for name, work in works.items():
        envelope.artifacts[name].CopyFrom(store_artifact(objects, "t", name, work.run(envelope, objects)))
    return envelope, objects


def artifact(envelope: task_pb2.TaskEnvelope, objects: DictObjects, stage: str) -> Image.Image:
    return Image.open(io.BytesIO(objects.get(envelope.artifacts[stage].object_key)))


@pytest.mark.parametrize("prompt", ["a watercolor painting", "pencil sketch"])  # the demo's cat tasks
def test_the_demo_results_match_the_inspected_reference(prompt: str) -> None:
    envelope, objects = run_task(prompt, StageSettings())
    result = artifact(envelope, objects, "matte")
    assert (result.mode, result.size) == ("RGBA", (526, 350))
    # Generate's pixels under the outline: the result is the styled picture, not the photo.
    styled = (
        artifact(envelope, objects, "generate").convert("RGB").resize(result.size, Image.Resampling.LANCZOS)
    )
    opaque = np.asarray(result.getchannel("A")) == 255
    difference = np.abs(np.asarray(result.convert("RGB"), np.int16) - np.asarray(styled, np.int16))
    assert np.median(difference[opaque]) <= 2
    reference = Image.open(REFERENCE).convert("L").resize(result.size, Image.Resampling.BILINEAR)
    cut, truth = np.asarray(result.getchannel("A")) > 127, np.asarray(reference) > 127
    iou = (cut & truth).sum() / (cut | truth).sum()
    assert iou >= 0.85, iou


def test_an_http_generate_backend_keeps_the_matte_on_its_picture() -> None:
    # A model server's picture need not line up with the photo pixel for pixel.
    settings = StageSettings(generate_backend="http")
    assert MatteWork.from_settings(settings)._outline_from_original is False
    assert MatteWork.from_settings(StageSettings())._outline_from_original is True
