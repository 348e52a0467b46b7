"""generate: restyle the normalized original from the prompt."""

from __future__ import annotations

from imgpipe.backends.null import NullStylizer
from imgpipe.imaging.generate import PillowStylizer, Stylizer
from imgpipe.objects import ObjectStore
from imgpipe.stages.images import png_output, read_artifact
from imgpipe.stages.runner import StageOutput
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2


class GenerateWork:
    stage = task_pb2.STAGE_GENERATE

    def __init__(self, stylizer: Stylizer) -> None:
        self._stylizer = stylizer

    @classmethod
    def from_settings(cls, settings: StageSettings) -> GenerateWork:
        if settings.generate_backend == "http":
            from imgpipe.backends.openai_generate import OpenAIImagesStylizer

            config = settings.model_server(
                settings.generate_url, settings.generate_model, settings.generate_api_key
            )
            return cls(OpenAIImagesStylizer(config))
        if settings.generate_backend == "null":
            return cls(NullStylizer())
        return cls(PillowStylizer())

    def run(self, envelope: task_pb2.TaskEnvelope, objects: ObjectStore) -> StageOutput:
        original = read_artifact(envelope, "detect", objects)
        return png_output(self._stylizer.stylize(original, envelope.prompt))
