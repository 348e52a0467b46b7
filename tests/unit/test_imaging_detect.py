"""HaarPetDetector and the pet policy on real photos: skimage's chelsea (a cat) and photos without one."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgpipe.imaging.detect import (
    Box,
    Detection,
    HaarPetDetector,
    PetPolicy,
    require_pet,
    select_pet,
)
from imgpipe.imaging.errors import ModelError, NoPetDetected
from imgpipe.samples import photo

pytestmark = pytest.mark.unit


CHELSEA = photo("chelsea")  # 451 x 300, a tabby's face filling the frame
# Rough landmarks of chelsea's face, in its pixel coordinates (read off the photo).
LEFT_EYE, RIGHT_EYE, NOSE = (165, 115), (315, 135), (262, 240)


@pytest.fixture(scope="module")
def detector() -> HaarPetDetector:
    return HaarPetDetector()


def contains(box: Box, point: tuple[int, int]) -> bool:
    return box.x <= point[0] < box.right and box.y <= point[1] < box.bottom


def test_chelsea_is_a_pet(detector: HaarPetDetector) -> None:
    pet = require_pet(detector.detect(CHELSEA))
    assert pet.label == "cat_face"
    assert pet.score >= PetPolicy().min_score
    assert pet.support >= PetPolicy().min_support
    for landmark in (LEFT_EYE, RIGHT_EYE, NOSE):
        assert contains(pet.box, landmark), (pet.box, landmark)
    assert pet.box == pet.box.clipped(CHELSEA.size)  # boxes are clipped to the image


def test_detections_are_sorted_best_first(detector: HaarPetDetector) -> None:
    detections = detector.detect(CHELSEA)
    keys = [(d.score, d.support) for d in detections]
    assert keys == sorted(keys, reverse=True)
    assert select_pet(detections) == detections[0]


@pytest.mark.parametrize(
    "variant",
    [
        ImageOps.mirror,
        lambda image: image.convert("L"),
        lambda image: image.convert("RGBA"),
        lambda image: image.resize((902, 600)),
        lambda image: image.resize((225, 150)),
    ],
    ids=["mirrored", "greyscale", "rgba", "x2", "x0.5"],
)
def test_chelsea_variants_are_pets(
    detector: HaarPetDetector, variant: Callable[[Image.Image], Image.Image]
) -> None:
    image = variant(CHELSEA)
    pet = require_pet(detector.detect(image))
    assert pet.box.area > 0.25 * image.width * image.height  # the face is the subject


def test_chelsea_inside_a_larger_canvas_is_found_where_it_is(detector: HaarPetDetector) -> None:
    canvas = Image.new("RGB", (800, 560), (200, 200, 200))
    canvas.paste(CHELSEA, (200, 130))
    pet = require_pet(detector.detect(canvas))
    nose = (NOSE[0] + 200, NOSE[1] + 130)
    assert contains(pet.box, nose)
    assert pet.box.right > 200 and pet.box.x < 200 + 451


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "rocket", "coins", "immunohistochemistry"])
def test_photos_without_a_pet_are_refused(detector: HaarPetDetector, name: str) -> None:
    image = photo(name)
    detections = detector.detect(image)
    assert select_pet(detections) is None
    with pytest.raises(NoPetDetected) as caught:
        require_pet(detections)
    assert caught.value.code == "no_pet_detected"
    assert caught.value.retryable is False


def test_plain_images_have_no_candidates(detector: HaarPetDetector) -> None:
    assert detector.detect(Image.new("RGB", (640, 480), (90, 120, 150))) == []
    noise = np.random.default_rng(7).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert select_pet(detector.detect(Image.fromarray(noise))) is None


def test_policy_is_configurable(detector: HaarPetDetector) -> None:
    chelsea = detector.detect(CHELSEA)
    with pytest.raises(NoPetDetected, match="best candidate score"):
        require_pet(chelsea, PetPolicy(min_score=1e9))
    best_support = max(d.support for d in chelsea)
    assert select_pet(chelsea, PetPolicy(min_score=0, min_support=best_support + 1)) is None

    # The coins' portraits fool one or two passes a little: the default policy refuses them, a policy
    # that accepts any single weak hit does not.
    coins = detector.detect(photo("coins"))
    assert coins, "expected weak candidates on the coins"
    assert select_pet(coins) is None
    assert select_pet(coins, PetPolicy(min_score=0, min_support=1)) is not None


def test_select_pet_applies_both_thresholds() -> None:
    strong_alone = Detection(Box(0, 0, 10, 10), score=50.0, support=1)
    weak_agreed = Detection(Box(0, 0, 10, 10), score=5.0, support=4)
    solid = Detection(Box(0, 0, 10, 10), score=12.0, support=2)
    assert select_pet([strong_alone, weak_agreed]) is None
    assert select_pet([strong_alone, weak_agreed, solid]) == solid
    assert select_pet([]) is None


def test_detection_is_deterministic_and_thread_safe(detector: HaarPetDetector) -> None:
    expected = detector.detect(CHELSEA)
    with ThreadPoolExecutor(max_workers=3) as pool:  # each worker thread loads its own cascades
        results = list(pool.map(detector.detect, [CHELSEA] * 3))
    assert all(result == expected for result in results)


def test_missing_cascade_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load Haar cascade") as caught:
        HaarPetDetector(cascade_dir=tmp_path)
    assert caught.value.retryable is False
    assert caught.value.code == "model_error"


def test_box_geometry() -> None:
    box = Box(10, 20, 30, 40)
    assert (box.right, box.bottom, box.area, box.center) == (40, 60, 1200, (25.0, 40.0))
    assert box.iou(box) == 1.0
    assert box.iou(Box(100, 100, 5, 5)) == 0.0
    assert box.iou(Box(25, 20, 30, 40)) == pytest.approx(600 / 1800)
    assert Box(-5, -5, 20, 20).clipped((10, 8)) == Box(0, 0, 10, 8)
    assert Box(50, 50, 5, 5).clipped((10, 10)).area == 0
    assert box.scaled(0.5) == Box(5, 10, 15, 20)
