"""GrabCutMatter and the final resize on skimage's chelsea."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from imgpipe.imaging.detect import Box, HaarPetDetector, require_pet
from imgpipe.imaging.errors import ModelError
from imgpipe.imaging.generate import PillowStylizer
from imgpipe.imaging.matte import (
    DEFAULT_SHORTER_SIDE,
    GrabCutConfig,
    GrabCutMatter,
    encode_rgba_png,
    resize_shorter_side,
)
from imgpipe.samples import photo, photo_jpeg

pytestmark = pytest.mark.unit


CHELSEA = photo("chelsea")  # 451 x 300 RGB
REFERENCE = Path(__file__).parents[1] / "data" / "matte" / "chelsea_reference.png"


@pytest.fixture(scope="module")
def cat_box() -> Box:
    return require_pet(HaarPetDetector().detect(CHELSEA)).box


@pytest.fixture(scope="module")
def matted(cat_box: Box) -> Image.Image:
    return GrabCutMatter().matte(CHELSEA, hint=cat_box)


def alpha(image: Image.Image) -> np.ndarray[tuple[int, ...], np.dtype[np.uint8]]:
    return np.asarray(image.getchannel("A"))


def corners(a: np.ndarray[tuple[int, ...], np.dtype[np.uint8]], size: int = 8) -> list[int]:
    return [
        int(a[:size, :size].max()),
        int(a[:size, -size:].max()),
        int(a[-size:, :size].max()),
        int(a[-size:, -size:].max()),
    ]


def test_matte_is_rgba_of_the_same_picture(matted: Image.Image) -> None:
    assert matted.mode == "RGBA"
    assert matted.size == CHELSEA.size
    assert np.array_equal(np.asarray(matted.convert("RGB")), np.asarray(CHELSEA))


def test_corners_transparent_cat_opaque(matted: Image.Image, cat_box: Box) -> None:
    a = alpha(matted)
    # Top left, top right, bottom right are the room; bottom left is chelsea's chest and flank,
    # which run out of the frame.
    assert corners(a) == [0, 0, 255, 0]
    cx, cy = (int(v) for v in cat_box.center)
    assert a[cy - 20 : cy + 20, cx - 20 : cx + 20].min() == 255
    # The face (eyes and nose of chelsea) is foreground, not just the box centre.
    for x, y in ((165, 115), (315, 135), (262, 240)):
        assert a[y, x] == 255, (x, y)
    # The left ear, above the face box, is kept too (the right ear's pink outer rim is not: no face
    # colour is like it).
    assert a[10, 70] == 255
    fraction = (a > 127).mean()
    assert 0.6 < fraction < 0.9, fraction  # the room on the right removed, the cat (76 %) kept


@pytest.mark.parametrize(
    "prompt",
    [None, "a watercolor painting"],  # the photo, and the demo's HTTP task as generate styles it
)
def test_matte_matches_the_inspected_reference(prompt: str | None) -> None:
    # The demo's input: chelsea as a q90 JPEG, the face box detect finds in it, then generate.
    original = Image.open(io.BytesIO(photo_jpeg("chelsea"))).convert("RGB")
    box = require_pet(HaarPetDetector().detect(original)).box
    image = original if prompt is None else PillowStylizer().stylize(original, prompt)
    cut = alpha(GrabCutMatter().matte(image, hint=box)) > 127
    reference = np.asarray(Image.open(REFERENCE).convert("L")) > 127  # see tests/data/matte/README.md
    iou = (cut & reference).sum() / (cut | reference).sum()
    assert iou >= 0.85, iou


def test_edge_is_feathered(matted: Image.Image) -> None:
    a = alpha(matted)
    partial = (a > 0) & (a < 255)
    assert 0 < partial.mean() < 0.15
    # A thin soft band around a mostly opaque cat, not a translucent cat.
    assert (a == 255).sum() > 3 * partial.sum()
    # The band is thin: clearly translucent pixels lie within a few pixels of the 50 % contour.
    inside = (a > 127).astype(np.uint8)
    to_contour = np.where(
        inside > 0,
        cv2.distanceTransform(inside, cv2.DIST_L2, 3),
        cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3),
    )
    translucent = (a >= 16) & (a <= 240)
    assert translucent.any()
    assert to_contour[translucent].max() <= 8


def test_without_hint_keeps_one_region_and_clears_the_border() -> None:
    # Without the face box chelsea's close-up fur is mostly taken for background (its border strip,
    # the certain background, is fur too): only the largest foreground region survives.
    a = alpha(GrabCutMatter().matte(CHELSEA))
    assert corners(a) == [0, 0, 0, 0]
    foreground = (a > 127).astype(np.uint8)
    assert foreground.mean() > 0.01
    count, _ = cv2.connectedComponents(foreground)
    assert count == 2  # background + one region


def test_existing_transparency_stays_transparent(cat_box: Box) -> None:
    rgba = CHELSEA.convert("RGBA")
    known = np.full((300, 451), 255, np.uint8)
    known[:, 300:] = 0  # the right third was already cut away
    rgba.putalpha(Image.fromarray(known))
    a = alpha(GrabCutMatter().matte(rgba, hint=cat_box))
    assert a[:, 300:].max() == 0
    assert a[150, 200] == 255


def test_matte_is_deterministic(matted: Image.Image, cat_box: Box) -> None:
    assert np.array_equal(alpha(GrabCutMatter().matte(CHELSEA, hint=cat_box)), alpha(matted))


def test_working_size_is_configurable(cat_box: Box) -> None:
    coarse = GrabCutMatter(GrabCutConfig(working_size=100, iterations=2)).matte(CHELSEA, hint=cat_box)
    assert coarse.size == CHELSEA.size
    assert corners(alpha(coarse))[1] == 0  # the room top right


def test_nothing_to_segment_is_a_permanent_model_error() -> None:
    transparent = Image.new("RGBA", (120, 80), (10, 20, 30, 0))
    with pytest.raises(ModelError, match="GrabCut failed") as caught:
        GrabCutMatter().matte(transparent)
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((451, 300), DEFAULT_SHORTER_SIDE, (526, 350)),  # landscape: height becomes 350
        ((300, 451), DEFAULT_SHORTER_SIDE, (350, 526)),  # portrait: width becomes 350
        ((400, 400), DEFAULT_SHORTER_SIDE, (350, 350)),
        ((100, 50), DEFAULT_SHORTER_SIDE, (700, 350)),  # small images are enlarged too
        ((4000, 3000), 350, (467, 350)),
        ((451, 300), 120, (180, 120)),
        ((3, 1000), 10, (10, 3333)),  # longer side rounded to the nearest pixel
    ],
)
def test_resize_shorter_side(size: tuple[int, int], target: int, expected: tuple[int, int]) -> None:
    assert resize_shorter_side(Image.new("RGB", size), target).size == expected


def test_resize_defaults_to_350_and_keeps_mode(matted: Image.Image) -> None:
    resized = resize_shorter_side(matted)
    assert min(resized.size) == 350
    assert resized.size == (526, 350)
    assert resized.mode == "RGBA"
    assert corners(alpha(resized)) == corners(alpha(matted))  # transparency survives the resize


def test_resize_to_the_same_size_returns_a_copy() -> None:
    image = Image.new("RGB", (350, 500), (1, 2, 3))
    same = resize_shorter_side(image)
    assert same.size == (350, 500)
    assert same is not image


def test_resize_rejects_a_non_positive_target() -> None:
    with pytest.raises(ValueError, match="target"):
        resize_shorter_side(CHELSEA, 0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_encode_rgba_png(mode: str) -> None:
    decoded = Image.open(io.BytesIO(encode_rgba_png(CHELSEA.convert(mode))))
    assert (decoded.format, decoded.mode, decoded.size) == ("PNG", "RGBA", CHELSEA.size)
