"""detect: fetch or read the original, validate and normalize it, and find the pet.

Its artifact is the normalized original as PNG (upright, 8-bit, RGB unless a PNG had alpha), which
every later stage starts from; the pet's box travels on in the envelope for matte.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from imgpipe.backends.null import NullPetDetector
from imgpipe.imaging.detect import HaarPetDetector, PetDetector, PetPolicy, require_pet, select_pet
from imgpipe.imaging.validate import load_image, normalize
from imgpipe.netguard import EgressPolicy, fetch
from imgpipe.objects import ObjectStore
from imgpipe.stages.images import png_output
from imgpipe.stages.runner import StageOutput, TaskFailed
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


class DetectWork:
    stage = task_pb2.STAGE_DETECT

    def __init__(
        self,
        detector: PetDetector,
        policy: PetPolicy | None,
        egress: EgressPolicy,
        limits: ImageLimits,
    ) -> None:
        self._detector = detector
        self._policy = policy  # None: a pet is looked for but not required
        self._egress = egress
        self._limits = limits

    @classmethod
    def from_settings(cls, settings: StageSettings) -> DetectWork:
        detector: PetDetector
        if settings.detect_backend == "http":
            from imgpipe.backends.oip_detect import OipPetDetector

            detector = OipPetDetector(settings.model_server(settings.detect_url, settings.detect_model))
        elif settings.detect_backend == "null":
            detector = NullPetDetector()
        else:
            detector = HaarPetDetector()
        policy = (
            PetPolicy(settings.pet_min_score, settings.pet_min_support) if settings.pet_required else None
        )
        egress = EgressPolicy.from_settings(
            allow_networks=settings.fetch_allow_networks,
            max_bytes=settings.max_image_bytes,
            total_timeout=settings.fetch_timeout_seconds,
            max_redirects=settings.fetch_max_redirects,
        )
        return cls(detector, policy, egress, ImageLimits(settings.max_image_bytes, settings.max_image_pixels))

    def run(self, envelope: task_pb2.TaskEnvelope, objects: ObjectStore) -> StageOutput:
        loaded = load_image(
            self._original(envelope, objects),
            max_bytes=self._limits.max_bytes,
            max_pixels=self._limits.max_pixels,
        )
        image = normalize(loaded)
        detections = self._detector.detect(image)
        pet = require_pet(detections, self._policy) if self._policy else select_pet(detections)
        if pet is not None:
            box = pet.box
            envelope.pet.CopyFrom(
                task_pb2.PetBox(
                    x=box.x, y=box.y, width=box.width, height=box.height, score=pet.score, label=pet.label
                )
            )
        log.info("detect: %s %dx%d, pet %s", loaded.format, image.width, image.height, pet)
        return png_output(image)

    def _original(self, envelope: task_pb2.TaskEnvelope, objects: ObjectStore) -> bytes:
        source = envelope.source
        kind = source.WhichOneof("kind")
        if kind == "object_key":
            return objects.get(source.object_key)
        if kind == "url":
            # The byte cap applies to the download too, so an endless body stops at the image cap.
            return fetch(source.url, self._egress).content
        raise TaskFailed("invalid_image", "task names no image (neither URL nor uploaded object)")
