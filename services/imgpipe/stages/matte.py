"""matte: remove the background to an RGBA PNG and make the final resize; its artifact is the result."""

from __future__ import annotations

from imgpipe.backends.null import NullMatter
from imgpipe.imaging.detect import Box
from imgpipe.imaging.matte import GrabCutMatter, Matter, resize_shorter_side
from imgpipe.objects import ObjectStore
from imgpipe.stages.images import png_output, read_artifact
from imgpipe.stages.runner import StageOutput
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2


class MatteWork:
    stage = task_pb2.STAGE_MATTE

    def __init__(self, matter: Matter, shorter_side: int) -> None:
        self._matter = matter
        self._shorter_side = shorter_side

    @classmethod
    def from_settings(cls, settings: StageSettings) -> MatteWork:
        matter: Matter
        if settings.matte_backend == "http":
            from imgpipe.backends.rembg_matte import RembgMatter

            matter = RembgMatter(settings.model_server(settings.matte_url, settings.matte_model))
        elif settings.matte_backend == "null":
            matter = NullMatter()
        else:
            matter = GrabCutMatter()
        return cls(matter, settings.result_shorter_side)

    def run(self, envelope: task_pb2.TaskEnvelope, objects: ObjectStore) -> StageOutput:
        styled = read_artifact(envelope, "generate", objects)
        pet = envelope.pet if envelope.HasField("pet") else None
        hint = None if pet is None else Box(pet.x, pet.y, pet.width, pet.height)
        cut_out = self._matter.matte(styled, hint=hint).convert("RGBA")
        return png_output(resize_shorter_side(cut_out, self._shorter_side))
