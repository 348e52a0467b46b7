"""Time the imaging building blocks on skimage's chelsea (451 x 300) and print a Markdown table.

    .venv/bin/python -m imgpipe.imaging.bench [--repeat N]

Each row runs its function once to warm up, then `repeat` times; "best" is the fastest run (what the
code costs on an idle core), "median" what this machine gave while it was doing other work too.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image
from skimage import data

from imgpipe.imaging.detect import HaarPetDetector, require_pet
from imgpipe.imaging.generate import KEYWORD_TABLE, PillowStylizer
from imgpipe.imaging.matte import GrabCutMatter, encode_rgba_png, resize_shorter_side
from imgpipe.imaging.validate import load_image, normalize


def _time(function: Callable[[], object], repeat: int) -> tuple[float, float]:
    function()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        runs.append(time.perf_counter() - start)
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    load_chelsea: Callable[[], npt.NDArray[np.uint8]] = data.chelsea  # skimage.data is untyped
    chelsea = Image.fromarray(load_chelsea())
    jpeg, png = io.BytesIO(), io.BytesIO()
    chelsea.save(jpeg, format="JPEG", quality=90)
    chelsea.save(png, format="PNG")
    loaded = load_image(jpeg.getvalue())
    detector = HaarPetDetector()
    box = require_pet(detector.detect(chelsea)).box
    matted = GrabCutMatter().matte(chelsea, hint=box)
    stylizer = PillowStylizer()

    rows: list[tuple[str, Callable[[], object]]] = [
        (f"load_image (JPEG, {len(jpeg.getvalue())} B)", lambda: load_image(jpeg.getvalue())),
        (f"load_image (PNG, {len(png.getvalue())} B)", lambda: load_image(png.getvalue())),
        ("normalize", lambda: normalize(loaded)),
        ("HaarPetDetector.detect + require_pet", lambda: require_pet(detector.detect(chelsea))),
        ("HaarPetDetector() (load 2 cascades)", HaarPetDetector),
        ("GrabCutMatter.matte (hint = cat box)", lambda: GrabCutMatter().matte(chelsea, hint=box)),
        ("GrabCutMatter.matte (no hint)", lambda: GrabCutMatter().matte(chelsea)),
        ("resize_shorter_side (RGBA -> 526x350)", lambda: resize_shorter_side(matted)),
        ("encode_rgba_png (526x350)", lambda: encode_rgba_png(resize_shorter_side(matted))),
    ]
    prompts = {effect.name: keywords[0] for keywords, effect in KEYWORD_TABLE if effect.kind == "style"}
    prompts["painterly"] = "a cat"
    prompts["painterly + tint_warm"] = "warm"
    for name, prompt in prompts.items():
        label = f'PillowStylizer.stylize "{prompt}" ({name})'
        rows.append((label, partial(stylizer.stylize, chelsea, prompt)))
    big = chelsea.resize((4000, 2660), Image.Resampling.BICUBIC)
    label = 'PillowStylizer.stylize "watercolor", 4000x2660 input (worked at 768x511)'
    rows.append((label, lambda: stylizer.stylize(big, "watercolor")))

    print(f"{os.cpu_count()} CPUs, OpenCV threads {cv2.getNumThreads()}, {args.repeat} runs each\n")
    print("| function | best ms | median ms |")
    print("|---|---:|---:|")
    for label, function in rows:
        best, median = _time(function, args.repeat)
        print(f"| {label} | {best * 1000:.2f} | {median * 1000:.2f} |")


if __name__ == "__main__":
    main()
