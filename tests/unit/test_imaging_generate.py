"""PillowStylizer on skimage's chelsea: effect selection from prompts, and real pixel changes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from imgpipe.imaging.arrays import U8Array
from imgpipe.imaging.errors import ModelError
from imgpipe.imaging.generate import (
    DEFAULT_STYLE,
    KEYWORD_TABLE,
    Effect,
    PillowStylizer,
    Stylizer,
    describe_effects,
    plan_effects,
)
from imgpipe.samples import photo

pytestmark = pytest.mark.unit


CHELSEA = photo("chelsea")  # 451 x 300 RGB
STYLE_PROMPTS = {
    "painterly": "my cat, but nicer",
    "watercolor": "a watercolor painting",
    "pencil_sketch": "pencil sketch",
    "cartoon": "anime cartoon",
    "sepia": "vintage photo",
    "noir": "film noir",
    "pop_art": "pop art",
    "soft_glow": "dreamy",
}


def pixels(image: Image.Image) -> np.ndarray[tuple[int, ...], np.dtype[np.int16]]:
    return np.asarray(image, dtype=np.int16)


def mean_change(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a.convert("RGB")) - pixels(b.convert("RGB"))).mean())


@pytest.fixture(scope="module")
def stylizer() -> PillowStylizer:
    return PillowStylizer()


@pytest.fixture(scope="module")
def styled(stylizer: PillowStylizer) -> dict[str, Image.Image]:
    return {name: stylizer.stylize(CHELSEA, prompt) for name, prompt in STYLE_PROMPTS.items()}


# --- prompt -> effects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Watercolour of my cat", ["watercolor"]),
        ("oil painting", ["watercolor"]),
        ("a pencil drawing", ["pencil_sketch"]),
        ("COMIC book style!", ["cartoon"]),
        ("cel-shaded", ["cartoon"]),
        ("sepia", ["sepia"]),
        ("an old photo", ["sepia"]),
        ("black-and-white portrait", ["noir"]),
        ("B & W", ["noir"]),
        ("Pop-Art", ["pop_art"]),
        ("vivid", ["pop_art"]),
        ("blur the background", ["soft_glow"]),
        ("warm", ["painterly", "tint_warm"]),
        ("cool tones", ["painterly", "tint_cool"]),
        ("make it blue", ["painterly", "tint_blue"]),
        ("golden hour watercolor", ["watercolor", "tint_gold"]),
        # the first style word wins, and so does the first tint word
        ("sketch, or maybe a cartoon", ["pencil_sketch"]),
        ("a cartoon, or maybe a sketch", ["cartoon"]),
        ("red and blue noir", ["noir", "tint_red"]),
        # no keyword: the default style
        ("", ["painterly"]),
        ("a cat wearing a hat", ["painterly"]),
        # whole words only
        ("art", ["painterly"]),
        ("redo the bluebird", ["painterly"]),
        ("popular", ["painterly"]),
    ],
)
def test_describe_effects(prompt: str, expected: list[str]) -> None:
    assert describe_effects(prompt) == expected


def test_keyword_table_is_data_with_unique_effect_names() -> None:
    names = [effect.name for _, effect in KEYWORD_TABLE]
    assert len(names) == len(set(names))
    assert DEFAULT_STYLE.name not in names
    assert all(keywords and all(k == k.lower() for k in keywords) for keywords, _ in KEYWORD_TABLE)
    for keywords, effect in KEYWORD_TABLE:  # every keyword selects its own row's effect
        for keyword in keywords:
            assert effect in plan_effects(keyword), keyword


# --- pixels -----------------------------------------------------------------------------------------


def test_pillow_stylizer_is_a_stylizer() -> None:
    stylizer: Stylizer = PillowStylizer()
    assert stylizer.stylize(CHELSEA, "sepia").size == CHELSEA.size


@pytest.mark.parametrize("name", list(STYLE_PROMPTS))
def test_every_style_keeps_size_and_mode_and_changes_pixels(
    styled: dict[str, Image.Image], name: str
) -> None:
    image = styled[name]
    assert image.size == CHELSEA.size
    assert image.mode == "RGB"
    assert mean_change(image, CHELSEA) > 5  # on a 0-255 scale


def test_styles_differ_from_each_other(styled: dict[str, Image.Image]) -> None:
    names = list(styled)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert mean_change(styled[a], styled[b]) > 2, (a, b)


@pytest.mark.parametrize("name", ["noir", "pencil_sketch"])
def test_monochrome_styles_are_grey(styled: dict[str, Image.Image], name: str) -> None:
    rgb = pixels(styled[name])
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 1])
    assert np.array_equal(rgb[:, :, 1], rgb[:, :, 2])


def test_noir_has_more_contrast_than_plain_greyscale(styled: dict[str, Image.Image]) -> None:
    assert pixels(styled["noir"])[:, :, 0].std() > pixels(CHELSEA.convert("L")).std() * 1.2


def test_sketch_is_mostly_paper(styled: dict[str, Image.Image]) -> None:
    grey = pixels(styled["pencil_sketch"])[:, :, 0]
    assert np.median(grey) > 200  # white paper, dark strokes
    assert (grey < 100).mean() > 0.005


def test_sepia_is_brown(styled: dict[str, Image.Image]) -> None:
    red, green, blue = (float(c) for c in pixels(styled["sepia"]).reshape(-1, 3).mean(axis=0))
    assert red > green > blue


def test_pop_art_is_more_saturated(styled: dict[str, Image.Image]) -> None:
    def saturation(image: Image.Image) -> float:
        return float(np.asarray(image.convert("HSV"))[:, :, 1].mean())

    assert saturation(styled["pop_art"]) > saturation(CHELSEA) * 1.3


def test_cartoon_has_few_colours(styled: dict[str, Image.Image]) -> None:
    def colours(image: Image.Image) -> int:
        return len(np.unique(pixels(image).reshape(-1, 3), axis=0))

    assert colours(styled["cartoon"]) < colours(CHELSEA) / 5


@pytest.mark.parametrize(("word", "channel"), [("red", 0), ("green", 1), ("blue", 2)])
def test_colour_words_tint(stylizer: PillowStylizer, word: str, channel: int) -> None:
    plain = pixels(stylizer.stylize(CHELSEA, "sepia")).reshape(-1, 3).mean(axis=0)
    tinted = pixels(stylizer.stylize(CHELSEA, f"sepia {word}")).reshape(-1, 3).mean(axis=0)
    share = tinted / tinted.sum() - plain / plain.sum()
    assert share[channel] > 0.02
    assert int(np.argmax(share)) == channel


def test_warm_and_cool_move_the_red_blue_balance(stylizer: PillowStylizer) -> None:
    def red_over_blue(image: Image.Image) -> float:
        rgb = pixels(image).reshape(-1, 3).mean(axis=0)
        return float(rgb[0] / rgb[2])

    plain = red_over_blue(stylizer.stylize(CHELSEA, "cat"))
    assert red_over_blue(stylizer.stylize(CHELSEA, "warm cat")) > plain * 1.1
    assert red_over_blue(stylizer.stylize(CHELSEA, "cool cat")) < plain / 1.1


def test_same_prompt_same_pixels(stylizer: PillowStylizer) -> None:
    for prompt in ("watercolor", "anime, warm", "a cat"):
        first = stylizer.stylize(CHELSEA, prompt)
        again = PillowStylizer().stylize(CHELSEA.copy(), prompt)
        assert np.array_equal(pixels(first), pixels(again)), prompt


def test_input_is_not_modified(stylizer: PillowStylizer) -> None:
    image = CHELSEA.copy()
    stylizer.stylize(image, "pop art")
    assert np.array_equal(pixels(image), pixels(CHELSEA))


# --- modes and sizes --------------------------------------------------------------------------------


def test_alpha_is_preserved(stylizer: PillowStylizer) -> None:
    rgba = CHELSEA.convert("RGBA")
    alpha = Image.linear_gradient("L").resize(rgba.size)
    rgba.putalpha(alpha)
    out = stylizer.stylize(rgba, "watercolor")
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    assert mean_change(out, rgba) > 5


def test_paletted_transparency_becomes_alpha(stylizer: PillowStylizer) -> None:
    paletted = CHELSEA.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    paletted.info["transparency"] = 0
    out = stylizer.stylize(paletted, "sketch")
    assert out.mode == "RGBA"
    assert 0 < (np.asarray(out.getchannel("A")) == 0).sum() < out.width * out.height


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_opaque_inputs_give_rgb(stylizer: PillowStylizer, mode: str) -> None:
    out = stylizer.stylize(CHELSEA.convert(mode), "vintage")
    assert out.mode == "RGB"
    assert out.size == CHELSEA.size


def test_large_images_are_worked_small_and_returned_full_size() -> None:
    large = CHELSEA.resize((1804, 1200), Image.Resampling.BICUBIC)
    out = PillowStylizer(max_side=451).stylize(large, "watercolor")
    assert out.size == (1804, 1200)
    # Worked at 451 x 300, so it must closely match the small result scaled up.
    small = PillowStylizer(max_side=451).stylize(CHELSEA, "watercolor")
    assert mean_change(out, small.resize(out.size, Image.Resampling.BICUBIC)) < 6
    assert mean_change(out, large) > 5


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (17, 5)])
def test_tiny_images_work(stylizer: PillowStylizer, size: tuple[int, int]) -> None:
    for prompt in STYLE_PROMPTS.values():
        assert stylizer.stylize(CHELSEA.resize(size), prompt).size == size


def test_max_side_must_be_sensible() -> None:
    with pytest.raises(ValueError, match="max_side"):
        PillowStylizer(max_side=4)


def test_opencv_failure_is_a_permanent_model_error() -> None:
    def broken(rgb: U8Array) -> U8Array:
        return np.asarray(cv2.GaussianBlur(rgb, (4, 4), 0), dtype=np.uint8)  # even kernel: cv2.error

    stylizer = PillowStylizer(table=((("broken",), Effect("broken", "style", broken)),))
    assert stylizer.describe("make it broken") == ["broken"]
    assert stylizer.describe("anything else") == ["painterly"]
    assert stylizer.stylize(CHELSEA, "anything else").size == CHELSEA.size
    with pytest.raises(ModelError, match="stylize failed") as caught:
        stylizer.stylize(CHELSEA, "make it broken")
    assert caught.value.retryable is False
    assert caught.value.code == "model_error"
