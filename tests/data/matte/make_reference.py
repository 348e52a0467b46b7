"""Rebuild chelsea's reference cat mask: `.venv/bin/python tests/data/matte/make_reference.py`.

A hand-drawn outline of the cat (traced on 4-5x crops of the photo) decides what is cat; a
full-resolution GrabCut with many iterations then places the edge exactly, but only inside a band of
`BAND` px around the outline: everything further inside is certain cat, further outside certain
background. See README.md here for how the result was checked.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from imgpipe.samples import photo_jpeg

HERE = Path(__file__).parent
BAND = 6  # px either side of the traced outline that GrabCut may decide

# Background regions of the 451 x 300 photo, (x, y) vertices; the rest of the frame is cat (its ears,
# forehead, chest and left flank leave the frame).
TOP_LEFT = [(0, 0), (40, 0), (38, 20), (32, 40), (30, 60), (30, 90), (25, 100), (15, 110), (5, 120), (0, 125)]
RIGHT = [
    (400, 0), (451, 0), (451, 300), (345, 300), (340, 260), (335, 250), (335, 225), (340, 200),
    (345, 190), (350, 175), (360, 150), (362, 110), (360, 70), (365, 50), (380, 25),
]  # fmt: skip


def traced(shape: tuple[int, int]) -> np.ndarray:
    cat = np.ones(shape, np.uint8)
    for polygon in (TOP_LEFT, RIGHT):
        cv2.fillPoly(cat, [np.array(polygon, np.int32)], 0)
    return cat


def reference(rgb: np.ndarray, iterations: int = 30) -> np.ndarray:
    cat = traced(rgb.shape[:2])
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * BAND + 1, 2 * BAND + 1))
    seeds = np.where(cat > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    seeds[cv2.erode(cat, kernel) > 0] = cv2.GC_FGD
    seeds[cv2.dilate(cat, kernel) == 0] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), seeds, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK
    )
    mask = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    # A small opening/closing removes single-pixel specks along the band without moving the edge.
    small = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, small), cv2.MORPH_CLOSE, small)
    return mask * 255


def main() -> None:
    rgb = np.asarray(Image.open(io.BytesIO(photo_jpeg("chelsea"))).convert("RGB"))
    Image.fromarray(reference(rgb)).convert("1").save(HERE / "chelsea_reference.png", optimize=True)


if __name__ == "__main__":
    main()
