"""The generate stage's interface, `Stylizer`, and its CPU backend, `PillowStylizer`.

`PillowStylizer` does not generate anything: it reads the prompt's words and applies classic
Pillow/OpenCV filters that suit them, so the pipeline runs end to end on a laptop without a model
server. How a prompt becomes effects (`plan_effects`):
- the prompt is lower-cased and split into words (anything but letters and digits separates;
  "b&w" is one word), and
  each keyword of `KEYWORD_TABLE` is matched as a whole word or phrase ("pop art" matches
  "Pop-Art!", "art" alone does not);
- one *style* is applied: the one whose keyword occurs first in the prompt (ties: table order);
  with no style keyword, `DEFAULT_STYLE` (an edge-preserving painterly smoothing);
- then at most one *tint*: the first colour word in the prompt.
Negations ("no blur") are not understood. The same prompt always selects the same effects and,
for the same image, gives the same pixels.

Work happens on a copy whose longer side is at most `max_side` (filters such as `cv2.stylization`
cost time per pixel); the result is scaled back to the input's size. Alpha, if the input has any,
is carried over unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from imgpipe.imaging.arrays import U8Array, alpha_array, rgb_array, rgb_image, shrink
from imgpipe.imaging.errors import ModelError

DEFAULT_MAX_SIDE: Final = 768

F32Array = npt.NDArray[np.float32]


class Stylizer(Protocol):
    def stylize(self, image: Image.Image, prompt: str) -> Image.Image:
        """The image restyled as `prompt` asks: same size; RGBA with the input's alpha if it had
        any, RGB otherwise."""
        ...


EffectFn = Callable[[U8Array], U8Array]  # H x W x 3 uint8 RGB in, same shape out


@dataclass(frozen=True)
class Effect:
    name: str
    kind: Literal["style", "tint"]
    apply: EffectFn


# --- styles ----------------------------------------------------------------------------------------
# OpenCV's photo module works in BGR; every function here takes and returns RGB.


def _u8(array: object) -> U8Array:
    return np.asarray(array, dtype=np.uint8)


def _bgr(rgb: U8Array) -> U8Array:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _grey3(grey: U8Array) -> U8Array:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _saturate(rgb: U8Array, factor: float) -> U8Array:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * factor, 0, 255)
    return _u8(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB))


def _painterly(rgb: U8Array) -> U8Array:
    """Edge-preserving smoothing (recursive domain transform) with slightly richer colour."""
    smooth = cv2.edgePreservingFilter(_bgr(rgb), flags=cv2.RECURS_FILTER, sigma_s=40, sigma_r=0.3)
    return _saturate(_u8(smooth)[:, :, ::-1], 1.15)


def _watercolor(rgb: U8Array) -> U8Array:
    """`cv2.stylization`: strong edge-preserving smoothing with flattened shading."""
    return _u8(cv2.stylization(_bgr(rgb), sigma_s=60, sigma_r=0.45))[:, :, ::-1].copy()


def _sketch(rgb: U8Array) -> U8Array:
    """Pencil sketch by colour dodge: the grey image divided by its blurred negative, so flat areas go
    white and edges stay as strokes; a gamma of 1.6 darkens the strokes. (`cv2.pencilSketch` was
    tried and turned chelsea's fur into a near-black mass.)"""
    grey = _u8(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    blurred_negative = _u8(cv2.GaussianBlur(255 - grey, (0, 0), max(grey.shape) / 60.0))
    dodge = _u8(cv2.divide(grey, 255 - blurred_negative, scale=256))
    gamma = _u8(np.clip(255.0 * (np.arange(256) / 255.0) ** 1.6 + 0.5, 0, 255))
    return _grey3(_u8(cv2.LUT(dodge, gamma)))


def _cartoon(rgb: U8Array) -> U8Array:
    """Three bilateral passes, colours quantised to 8 levels a channel, dark outlines from an
    adaptive threshold of the median-blurred luminance."""
    smooth = rgb
    for _ in range(3):
        smooth = _u8(cv2.bilateralFilter(smooth, d=7, sigmaColor=60, sigmaSpace=7))
    step = 256 // 8
    quantised = _u8(np.minimum((smooth // step) * step + step // 2, 255))
    grey = _u8(cv2.medianBlur(_u8(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), 7))
    block = max(3, (min(grey.shape) // 30) | 1)  # odd, ~3 % of the shorter side
    edges = _u8(cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, 7))
    return _u8(cv2.bitwise_and(quantised, quantised, mask=edges))


_SEPIA: Final = np.array(
    [[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32
)


def _vignette(shape: tuple[int, ...], strength: float) -> F32Array:
    height, width = shape[:2]
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    falloff = 1.0 - strength * np.clip((xs * xs + ys * ys) / 2.0, 0.0, 1.0)
    return np.asarray(falloff, dtype=np.float32)


def _sepia(rgb: U8Array) -> U8Array:
    """The classic sepia matrix, slightly faded, with a soft vignette."""
    toned = cv2.transform(rgb.astype(np.float32), _SEPIA)
    faded = toned * 0.9 + 20.0
    return _u8(np.clip(faded * _vignette(rgb.shape, 0.35)[:, :, None], 0, 255))


def _noir(rgb: U8Array) -> U8Array:
    """Greyscale, local contrast (CLAHE), then an S-curve for deep blacks and bright highlights."""
    grey = _u8(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    local = _u8(cv2.createCLAHE(clipLimit=2.5, tileGridSize=(8, 8)).apply(grey))
    x = np.arange(256, dtype=np.float32) / 255.0
    curve = _u8(np.clip(255.0 / (1.0 + np.exp(-10.0 * (x - 0.5))), 0, 255))
    return _grey3(_u8(cv2.LUT(local, curve)))


def _pop_art(rgb: U8Array) -> U8Array:
    """Posterised to 3 bits a channel (Pillow), saturation x1.8."""
    poster = np.asarray(ImageOps.posterize(Image.fromarray(rgb), 3), dtype=np.uint8)
    return _saturate(poster, 1.8)


def _glow(rgb: U8Array) -> U8Array:
    """Soft glow: a wide Gaussian blur screened over a slightly softened copy."""
    sigma = max(rgb.shape[:2]) / 60.0
    base = rgb.astype(np.float32) / 255.0
    soft = cv2.GaussianBlur(base, (0, 0), sigma / 4)
    halo = cv2.GaussianBlur(base, (0, 0), sigma)
    screen = 1.0 - (1.0 - soft) * (1.0 - 0.6 * halo)
    return _u8(np.clip(screen * 255.0 + 0.5, 0, 255))


# --- tints -----------------------------------------------------------------------------------------


def _tint(colour: tuple[int, int, int], strength: float = 0.5) -> EffectFn:
    """Per-channel gains that push towards `colour` while keeping the mean brightness (gains
    average 1)."""
    target = np.array(colour, dtype=np.float32) / 255.0
    gains = 1.0 + strength * (target - target.mean())
    table = np.clip(np.arange(256, dtype=np.float32)[:, None] * gains[None, :], 0, 255)
    lut = _u8(table + 0.5).reshape(1, 256, 3)

    def apply(rgb: U8Array) -> U8Array:
        return _u8(cv2.LUT(rgb, lut))

    return apply


WATERCOLOR: Final = Effect("watercolor", "style", _watercolor)
SKETCH: Final = Effect("pencil_sketch", "style", _sketch)
CARTOON: Final = Effect("cartoon", "style", _cartoon)
SEPIA: Final = Effect("sepia", "style", _sepia)
NOIR: Final = Effect("noir", "style", _noir)
POP_ART: Final = Effect("pop_art", "style", _pop_art)
GLOW: Final = Effect("soft_glow", "style", _glow)
DEFAULT_STYLE: Final = Effect("painterly", "style", _painterly)

KeywordTable = tuple[tuple[tuple[str, ...], Effect], ...]

# (keywords, effect): whole words or phrases, matched after the same normalisation as the prompt.
KEYWORD_TABLE: Final[KeywordTable] = (
    (("watercolor", "watercolour", "painting", "painted", "paint", "oil", "impressionist"), WATERCOLOR),
    (("sketch", "pencil", "drawing", "drawn", "charcoal"), SKETCH),
    (("cartoon", "comic", "anime", "manga", "cel shaded", "toon"), CARTOON),
    (("vintage", "sepia", "retro", "old photo", "antique"), SEPIA),
    (("noir", "black and white", "b&w", "monochrome", "greyscale", "grayscale"), NOIR),
    (("pop art", "vivid", "vibrant", "psychedelic", "warhol", "posterize", "poster"), POP_ART),
    (("blur", "blurry", "dream", "dreamy", "soft", "glow", "glowing", "ethereal"), GLOW),
    (("warm", "sunny", "sunset", "orange"), Effect("tint_warm", "tint", _tint((255, 150, 60)))),
    (("cool", "cold", "icy", "winter"), Effect("tint_cool", "tint", _tint((90, 170, 255)))),
    (("blue",), Effect("tint_blue", "tint", _tint((40, 90, 255)))),
    (("red",), Effect("tint_red", "tint", _tint((255, 40, 40)))),
    (("green",), Effect("tint_green", "tint", _tint((50, 220, 70)))),
    (("purple", "violet"), Effect("tint_purple", "tint", _tint((170, 60, 255)))),
    (("pink",), Effect("tint_pink", "tint", _tint((255, 100, 180)))),
    (("gold", "golden"), Effect("tint_gold", "tint", _tint((255, 200, 50)))),
)


def _words(text: str) -> tuple[str, ...]:
    """Lower-case words; "b&w" (also "B & W") is kept as one word so the table can name it."""
    return tuple(re.findall(r"b&w|[a-z0-9]+", re.sub(r"\bb\s*&\s*w\b", "b&w", text.lower())))


def _first_position(words: tuple[str, ...], phrase: tuple[str, ...]) -> int | None:
    for start in range(len(words) - len(phrase) + 1):
        if words[start : start + len(phrase)] == phrase:
            return start
    return None


def plan_effects(
    prompt: str, table: KeywordTable = KEYWORD_TABLE, default: Effect = DEFAULT_STYLE
) -> tuple[Effect, ...]:
    """The effects applied for `prompt`, in order: one style (`default` if no style keyword matches),
    then at most one tint."""
    words = _words(prompt)
    # kind -> (first word position, table row, effect); the smallest (position, row) wins
    best: dict[str, tuple[int, int, Effect]] = {}
    for row, (keywords, effect) in enumerate(table):
        positions = [_first_position(words, _words(keyword)) for keyword in keywords]
        found = [p for p in positions if p is not None]
        if not found:
            continue
        candidate = (min(found), row, effect)
        current = best.get(effect.kind)
        if current is None or candidate[:2] < current[:2]:
            best[effect.kind] = candidate
    style = best["style"][2] if "style" in best else default
    return (style, best["tint"][2]) if "tint" in best else (style,)


def describe_effects(prompt: str) -> list[str]:
    """Names of the effects `PillowStylizer()` applies for `prompt`, in order (for logs)."""
    return [effect.name for effect in plan_effects(prompt)]


class PillowStylizer:
    """CPU `Stylizer`: Pillow/OpenCV filters chosen from the prompt's words (module docstring).

    `table` and `default` replace the built-in keyword table and fallback style.
    """

    def __init__(
        self,
        max_side: int = DEFAULT_MAX_SIDE,
        *,
        table: KeywordTable = KEYWORD_TABLE,
        default: Effect = DEFAULT_STYLE,
    ) -> None:
        if max_side < 16:
            raise ValueError(f"max_side must be at least 16, not {max_side}")
        self.max_side = max_side
        self.table = table
        self.default = default

    def describe(self, prompt: str) -> list[str]:
        """Names of the effects this stylizer applies for `prompt`, in order."""
        return [effect.name for effect in plan_effects(prompt, self.table, self.default)]

    def stylize(self, image: Image.Image, prompt: str) -> Image.Image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ModelError(f"cannot stylize an empty image ({width}x{height})", retryable=False)
        if image.mode not in ("RGB", "RGBA") and image.has_transparency_data:
            image = image.convert("RGBA")
        alpha = alpha_array(image)
        work, scale = shrink(rgb_array(image), self.max_side)
        try:
            for effect in plan_effects(prompt, self.table, self.default):
                work = effect.apply(work)
            if scale < 1.0:
                work = _u8(cv2.resize(work, (width, height), interpolation=cv2.INTER_CUBIC))
        except cv2.error as exc:
            raise ModelError(f"stylize failed: {exc}", retryable=False) from exc
        return rgb_image(work, alpha)
