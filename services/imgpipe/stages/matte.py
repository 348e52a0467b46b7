"""matte: remove the background to an RGBA PNG and make the final resize; its artifact is the result.

With the local backends on both sides the outline is found in the normalized original (detect's
artifact), not in generate's picture, and laid on the latter as its alpha: GrabCut tells the pet from
the room by colour, which a style repaints (a pencil sketch is grey on white everywhere), while the
local stylizer moves no pixel. A model server's picture (or matte) keeps only the geometry the
contract asks for, so the http backends matte what generate made.
"""

from __future__ import annotations

from imgpipe.backends.null import NullMatter
from imgpipe.imaging.detect import Box
from imgpipe.imaging.matte import GrabCutMatter, Matter, resize_shorter_side
from imgpipe.objects import ObjectStore
from imgpipe.stages.images import RESULT_PNG_LEVEL, png_output, read_artifact
from imgpipe.stages.runner import StageOutput
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2


class MatteWork:
    stage = task_pb2.STAGE_MATTE

    def __init__(self, matter: Matter, shorter_side: int, *, outline_from_original: bool = False) -> None:
        self._matter = matter
        self._shorter_side = shorter_side
        self._outline_from_original = outline_from_original

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
        local = settings.matte_backend == "local" and settings.generate_backend == "local"
        return cls(matter, settings.result_shorter_side, outline_from_original=local)

    def run(self, envelope: task_pb2.TaskEnvelope, objects: ObjectStore) -> StageOutput:
        styled = read_artifact(envelope, "generate", objects)
        pet = envelope.pet if envelope.HasField("pet") else None
        hint = None if pet is None else Box(pet.x, pet.y, pet.width, pet.height)
        source = styled
        if self._outline_from_original:
            original = read_artifact(envelope, "detect", objects)
            source = original if original.size == styled.size else styled
        cut_out = self._matter.matte(source, hint=hint)
        if source is not styled:  # the original's outline, generate's pixels
            alpha = cut_out.getchannel("A")
            cut_out = styled.convert("RGB")
            cut_out.putalpha(alpha)
        result = resize_shorter_side(cut_out.convert("RGBA"), self._shorter_side)
        return png_output(result, compress_level=RESULT_PNG_LEVEL)
