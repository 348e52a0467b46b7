"""Background removal: the `Matter` interface, a GrabCut CPU backend, and the final resize.

`GrabCutMatter` segments a downscaled copy (GrabCut's cost grows with pixels x iterations, and a
matte needs far less resolution than the picture), then scales the mask back up and feathers it.
Its seeds, with a detected face box (`hint`):
- the face box's core is certain foreground, so the face survives even when its colours resemble
  the background;
- the pet is looked for in the face box grown toward its body (sideways, up for the ears, most of all
  down): outside that box is certain background;
- inside it, a pixel starts as "probably foreground" when its colour is one of the face's (within
  what the face's own pixels spread), else "probably background". GrabCut may flip both. A close-up
  pet runs out of the frame (chelsea's ears, chest and flank do), so the frame's edge is not taken as
  background here: colour decides, and GrabCut needs a fair first guess of the background to learn
  from; seeding only the face, or all of the grown box, as foreground leaves it none;
- when no colour in the grown box is unlike the face (a pencil sketch is grey everywhere), a border
  strip (`inset` of each side) becomes certain background, as without a hint.
Without a hint: the border strip is certain background and everything inside "probably foreground".
Pixels that are already transparent in the input stay background.
Only the connected foreground region that contains the hint (or the largest one) is kept, so stray
background islands that happen to match the fur colour are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from imgpipe.imaging.arrays import U8Array, alpha_array, rgb_array, shrink
from imgpipe.imaging.detect import Box
from imgpipe.imaging.errors import ModelError
from imgpipe.imaging.validate import encode_png

DEFAULT_SHORTER_SIDE: Final = 350  # the old system's output size


class Matter(Protocol):
    def matte(self, image: Image.Image, *, hint: Box | None = None) -> Image.Image:
        """RGBA image of the same size whose alpha is the foreground; `hint` is the pet's box, if known."""
        ...


@dataclass(frozen=True)
class GrabCutConfig:
    # Measured on chelsea: 200 px x 3 iterations takes ~0.16 s and keeps the same foreground as
    # 320 px x 5 iterations (~0.8 s); GrabCut's time grows faster than its pixel count.
    working_size: int = 200  # longer side GrabCut runs at
    inset: float = 0.04  # border strip taken as certain background, fraction of each side
    iterations: int = 3
    # Central fraction of the hint box taken as certain foreground. Haar boxes are loose: chelsea's
    # reaches ~70 px into the background beside her cheek, so more than half would seed background.
    hint_core: float = 0.5
    # Where the pet may be, in face-box sizes beyond each side of the box: a body is below the face
    # and often wider than it, the ears stick out above the box.
    grow_side: float = 1.0
    grow_up: float = 0.6
    grow_down: float = 3.0
    face_colours: int = 8  # k-means clusters of the face core's colours (Lab)
    # A pixel's colour is the face's if it is as close to a cluster as this percentile of the face's
    # own pixels; 90-99 give the same chelsea mattes (IoU 0.92-0.99 against the reference).
    face_colour_percentile: float = 95.0
    feather: float = 0.004  # Gaussian sigma of the edge, as a fraction of the longer side


class GrabCutMatter:
    def __init__(self, config: GrabCutConfig | None = None) -> None:
        self.config = config or GrabCutConfig()

    def matte(self, image: Image.Image, *, hint: Box | None = None) -> Image.Image:
        cfg = self.config
        small, scale = shrink(rgb_array(image), cfg.working_size)
        existing_alpha = alpha_array(image)
        small_alpha = None if existing_alpha is None else shrink(existing_alpha, cfg.working_size)[0]
        small_hint = None if hint is None else hint.scaled(scale)
        seeds = self._seeds(small, small_hint, small_alpha)
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        # GrabCut seeds its colour models with k-means on OpenCV's thread-local RNG: a fixed seed makes
        # the matte a function of its input, so a redone task stores the same artifact.
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(
                cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                seeds,
                (0, 0, 0, 0),  # no rectangle: GC_INIT_WITH_MASK seeds from `seeds`
                background_model,
                foreground_model,
                cfg.iterations,
                cv2.GC_INIT_WITH_MASK,
            )
        except cv2.error as exc:  # e.g. no background or no foreground seed left
            raise ModelError(f"GrabCut failed: {exc}", retryable=False) from exc
        foreground = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
        foreground = _main_region(foreground, small_hint)
        alpha = self._upscale_and_feather(foreground, image.size)
        if existing_alpha is not None:
            alpha = np.minimum(alpha, existing_alpha)
        result = image.convert("RGB")
        result.putalpha(Image.fromarray(alpha))
        return result

    def _seeds(self, rgb: U8Array, hint: Box | None, alpha: U8Array | None) -> U8Array:
        cfg = self.config
        height, width = rgb.shape[:2]
        dy, dx = max(1, round(height * cfg.inset)), max(1, round(width * cfg.inset))
        if hint is None:
            seeds = np.full((height, width), cv2.GC_BGD, np.uint8)
            seeds[dy : height - dy, dx : width - dx] = cv2.GC_PR_FGD
        else:
            seeds = self._pet_seeds(rgb, hint)
            if not np.isin(seeds, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
                # Colour tells nothing apart: the frame's edge is the only background left to assume.
                border = np.ones((height, width), bool)
                border[dy : height - dy, dx : width - dx] = False
                seeds[border & (seeds != cv2.GC_FGD)] = cv2.GC_BGD
        if alpha is not None:
            seeds[alpha < 16] = cv2.GC_BGD
        return seeds

    def _pet_seeds(self, rgb: U8Array, hint: Box) -> U8Array:
        cfg = self.config
        height, width = rgb.shape[:2]
        core = _shrink_box(hint, cfg.hint_core).clipped((width, height))
        body = _grow_box(hint, cfg.grow_side, cfg.grow_up, cfg.grow_down).clipped((width, height))
        seeds = np.full((height, width), cv2.GC_BGD, np.uint8)
        if core.area == 0:  # a degenerate hint: nothing certain to start from
            seeds[body.y : body.bottom, body.x : body.right] = cv2.GC_PR_FGD
            return seeds
        face_like = _face_coloured(rgb, core, cfg.face_colours, cfg.face_colour_percentile)
        inside = (slice(body.y, body.bottom), slice(body.x, body.right))
        seeds[inside] = np.where(face_like[inside], cv2.GC_PR_FGD, cv2.GC_PR_BGD)
        seeds[core.y : core.bottom, core.x : core.right] = cv2.GC_FGD
        return seeds

    def _upscale_and_feather(self, mask: U8Array, size: tuple[int, int]) -> U8Array:
        """Bilinear upscale of the 0/1 mask gives a soft edge one working pixel wide; a small blur
        at full size smooths the staircase into a feather of a few output pixels."""
        soft = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        sigma = max(size) * self.config.feather
        if sigma > 0.3:
            soft = cv2.GaussianBlur(soft, (0, 0), sigma)
        alpha: U8Array = np.clip(soft * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return alpha


def _shrink_box(box: Box, fraction: float) -> Box:
    width, height = round(box.width * fraction), round(box.height * fraction)
    return Box(box.x + (box.width - width) // 2, box.y + (box.height - height) // 2, width, height)


def _grow_box(box: Box, side: float, up: float, down: float) -> Box:
    """`box` extended by the given multiples of its width (each side) and height (up, down)."""
    x0, x1 = box.x - round(box.width * side), box.right + round(box.width * side)
    y0, y1 = box.y - round(box.height * up), box.bottom + round(box.height * down)
    return Box(x0, y0, x1 - x0, y1 - y0)


def _face_coloured(rgb: U8Array, core: Box, clusters: int, percentile: float) -> npt.NDArray[np.bool_]:
    """Pixels whose Lab colour is as near one of the face core's k-means colours as most of the
    core's own pixels are (the `percentile`-th nearest), smoothed so that fur texture and JPEG noise
    do not speckle the first guess."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    samples = lab[core.y : core.bottom, core.x : core.right].reshape(-1, 3)
    clusters = min(clusters, len(samples))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)  # k-means starts from OpenCV's RNG: fixed, so the matte is a function of its input
    labels = np.zeros((len(samples), 1), np.int32)  # an output only: k-means++ picks the start
    _, _, centres = cv2.kmeans(samples, clusters, labels, criteria, 2, cv2.KMEANS_PP_CENTERS)
    distance = np.full(lab.shape[:2], np.inf, np.float32)
    for centre in centres:
        np.minimum(distance, np.linalg.norm(lab - centre, axis=2), out=distance)
    limit = float(np.percentile(distance[core.y : core.bottom, core.x : core.right], percentile))
    smooth = cv2.blur(distance, (5, 5))
    face_like: npt.NDArray[np.bool_] = smooth <= limit
    return face_like


def _main_region(mask: U8Array, hint: Box | None) -> U8Array:
    """Keep the connected component under the hint's centre (else the largest), holes filled."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    keep = 0
    if hint is not None:
        cx, cy = (int(v) for v in hint.center)
        if 0 <= cy < labels.shape[0] and 0 <= cx < labels.shape[1]:
            keep = int(labels[cy, cx])
    if keep == 0:
        keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == keep).astype(np.uint8)
    # Fill holes: flood the background from a one-pixel frame around the image (the pet may touch
    # the corners); whatever the flood cannot reach is inside.
    flooded = np.pad(region, 1)
    cv2.floodFill(flooded, np.zeros((flooded.shape[0] + 2, flooded.shape[1] + 2), np.uint8), (0, 0), 1)
    filled: U8Array = region | (1 - flooded[1:-1, 1:-1])
    return filled


def resize_shorter_side(image: Image.Image, target: int = DEFAULT_SHORTER_SIDE) -> Image.Image:
    """Scale so the shorter side is exactly `target`, keeping the aspect ratio (LANCZOS).

    This always resizes, enlarging small images too: the old system did, and clients rely on
    the fixed size. The longer side is rounded to the nearest pixel (at least 1).
    """
    if target < 1:
        raise ValueError(f"target must be positive, not {target}")
    width, height = image.size
    if width <= height:
        size = (target, max(1, round(height * target / width)))
    else:
        size = (max(1, round(width * target / height)), target)
    if size == image.size:
        return image.copy()
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_rgba_png(image: Image.Image) -> bytes:
    """The stage's output format: RGBA PNG, whatever mode `image` has."""
    return encode_png(image if image.mode == "RGBA" else image.convert("RGBA"))
