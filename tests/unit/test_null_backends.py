"""The `null` backends: the stages run end to end with no model work (the null benchmark workload)."""

from __future__ import annotations

import io

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


def test_null_backends_pass_the_photo_through_every_stage() -> None:
    settings = StageSettings(detect_backend="null", generate_backend="null", matte_backend="null")
    works: dict[str, StageWork] = {
        "detect": DetectWork.from_settings(settings),
        "generate": GenerateWork.from_settings(settings),
        "matte": MatteWork.from_settings(settings),
    }
    objects = DictObjects()
    objects.put("t/original", photo_jpeg(), "image/jpeg")
    envelope = task_pb2.TaskEnvelope(task_id="t", prompt="noir")
    envelope.source.object_key = "t/original"
    for name, work in works.items():
        envelope.artifacts[name].CopyFrom(store_artifact(objects, "t", name, work.run(envelope, objects)))
    assert envelope.pet.width > 0 and envelope.pet.score >= settings.pet_min_score  # detect passed it on
    result = Image.open(io.BytesIO(objects.get(envelope.artifacts["matte"].object_key)))
    assert result.mode == "RGBA"
    assert min(result.size) == settings.result_shorter_side
    assert result.getchannel("A").getextrema() == (255, 255)
