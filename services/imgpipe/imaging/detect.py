"""Pet detection: the `PetDetector` interface, a CPU backend on OpenCV's cat-face cascades, and the
policy that turns detections into "a pet is present".

`HaarPetDetector` settings were chosen by measurement (docs/imaging.md has the numbers) on
skimage's chelsea photo and variants of it (mirrored, x0.5, x3, small inside a large canvas, darker,
JPEG q40) against 27 photos and synthetic images without a cat:
- Work on a grey copy whose longer side is 160 px and look for faces of at least 32 px there, i.e.
  at least 20 % of the image's longer side: the pet must be the subject of the photo. Smaller
  windows found nothing more in the measurements and cost 40 % more time.
- Pad the copy by 50 % (edge replicated) on every side. Close-up pet photos crop the head
  (chelsea's ears leave the frame); Haar windows must contain the whole face, and padding lets
  them. Reflected padding was worse: it mirrors half-faces into whole ones.
- No histogram equalisation: both global and CLAHE equalisation lost chelsea in most settings.
- scaleFactor 1.03 (a fine pyramid) and minNeighbors 1, then fuse: run both cascades on the image
  and its mirror (four passes), cluster boxes that overlap (IoU > 0.3), score a cluster by its
  total neighbour count and note how many passes agree. A cat face is found by several passes
  with many neighbours; texture that fools one cascade rarely fools the others.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import cv2
import cv2.data
import numpy as np
from PIL import Image

from imgpipe.imaging.arrays import U8Array, gray_array, shrink
from imgpipe.imaging.errors import ModelError, NoPetDetected

CASCADE_FILES: Final = ("haarcascade_frontalcatface.xml", "haarcascade_frontalcatface_extended.xml")


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixel coordinates of the image it was found in."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.width / 2, self.y + self.height / 2)

    def iou(self, other: Box) -> float:
        overlap_w = max(0, min(self.right, other.right) - max(self.x, other.x))
        overlap_h = max(0, min(self.bottom, other.bottom) - max(self.y, other.y))
        overlap = overlap_w * overlap_h
        union = self.area + other.area - overlap
        return overlap / union if union else 0.0

    def clipped(self, size: tuple[int, int]) -> Box:
        """The part of the box inside an image of `size` (width, height)."""
        x0, y0 = max(0, self.x), max(0, self.y)
        x1, y1 = min(size[0], self.right), min(size[1], self.bottom)
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def scaled(self, factor: float) -> Box:
        return Box(
            round(self.x * factor),
            round(self.y * factor),
            round(self.width * factor),
            round(self.height * factor),
        )


@dataclass(frozen=True)
class Detection:
    box: Box  # in the coordinates of the image given to `detect`, clipped to it
    score: float  # backend-specific confidence; the policy's threshold is calibrated per backend
    label: str = "cat_face"
    support: int = 1  # independent passes (cascade x orientation) that found it


class PetDetector(Protocol):
    def detect(self, image: Image.Image) -> list[Detection]:
        """Every candidate, best first; deciding "pet present" is the policy's job, not the backend's."""
        ...


@dataclass(frozen=True)
class HaarConfig:
    working_size: int = 160  # longer side of the grey copy the cascades scan
    padding: float = 0.5  # replicated border on each side, as a fraction of the longer side
    scale_factor: float = 1.03
    min_neighbors: int = 1  # keep weak hits; fusion across passes does the filtering
    min_size: int = 32  # smallest face, in working-copy pixels (the cascades' window is 24)
    cluster_iou: float = 0.3


class HaarPetDetector:
    """Cat faces with OpenCV's shipped Haar cascades; see the module docstring for the tuning.

    `cv2.CascadeClassifier` is not safe to share between threads, so each thread loads its own
    copy on first use (a few milliseconds).
    """

    def __init__(self, config: HaarConfig | None = None, cascade_dir: Path | None = None) -> None:
        self.config = config or HaarConfig()
        directory = cascade_dir or Path(cv2.data.haarcascades)
        self._paths = tuple(directory / name for name in CASCADE_FILES)
        self._local = threading.local()
        self._cascades()  # fail at construction, not on the first image, if a file is missing

    def _cascades(self) -> list[cv2.CascadeClassifier]:
        loaded: list[cv2.CascadeClassifier] | None = getattr(self._local, "cascades", None)
        if loaded is None:
            loaded = []
            for path in self._paths:
                cascade = cv2.CascadeClassifier(str(path))
                if cascade.empty():
                    raise ModelError(f"cannot load Haar cascade {path}", retryable=False)
                loaded.append(cascade)
            self._local.cascades = loaded
        return loaded

    def detect(self, image: Image.Image) -> list[Detection]:
        cfg = self.config
        small, scale = shrink(gray_array(image), cfg.working_size)
        pad = round(max(small.shape) * cfg.padding)
        padded: U8Array = np.asarray(
            cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REPLICATE), dtype=np.uint8
        )
        hits: list[tuple[Box, int, int]] = []  # (box in `image` pixels, neighbours, pass id)
        try:
            for pass_id, (cascade, mirrored) in enumerate(
                (c, m) for c in self._cascades() for m in (False, True)
            ):
                hits.extend(self._scan(cascade, padded, mirrored, pad, scale, pass_id))
        except cv2.error as exc:
            raise ModelError(f"cascade scan failed: {exc}", retryable=False) from exc
        detections = []
        for cluster in _cluster(hits, cfg.cluster_iou):
            fused = _fuse(cluster)
            box = fused.box.clipped(image.size)
            if box.area > 0:
                detections.append(Detection(box, fused.score, fused.label, fused.support))
        return sorted(detections, key=lambda d: (d.score, d.support), reverse=True)

    def _scan(
        self,
        cascade: cv2.CascadeClassifier,
        padded: U8Array,
        mirrored: bool,
        pad: int,
        scale: float,
        pass_id: int,
    ) -> list[tuple[Box, int, int]]:
        cfg = self.config
        view = np.ascontiguousarray(padded[:, ::-1]) if mirrored else padded
        boxes, neighbours = cascade.detectMultiScale2(
            view,
            scaleFactor=cfg.scale_factor,
            minNeighbors=cfg.min_neighbors,
            minSize=(cfg.min_size, cfg.min_size),
        )
        found = []
        for (x, y, w, h), n in zip(boxes, neighbours, strict=True):
            left = view.shape[1] - x - w if mirrored else x
            box = Box(int(left) - pad, int(y) - pad, int(w), int(h)).scaled(1 / scale)
            found.append((box, int(n), pass_id))
        return found


def _cluster(hits: Sequence[tuple[Box, int, int]], min_iou: float) -> list[list[tuple[Box, int, int]]]:
    """Greedy grouping, strongest hit first: each hit joins the first cluster whose seed it overlaps."""
    clusters: list[list[tuple[Box, int, int]]] = []
    for hit in sorted(hits, key=lambda h: h[1], reverse=True):
        for cluster in clusters:
            if cluster[0][0].iou(hit[0]) > min_iou:
                cluster.append(hit)
                break
        else:
            clusters.append([hit])
    return clusters


def _fuse(cluster: Sequence[tuple[Box, int, int]]) -> Detection:
    """One detection per cluster: neighbour-weighted mean box, summed neighbours, distinct passes."""
    weights = np.array([n for _, n, _ in cluster], dtype=float)
    coords = np.array([(b.x, b.y, b.width, b.height) for b, _, _ in cluster], dtype=float)
    x, y, w, h = (round(v) for v in np.average(coords, axis=0, weights=weights))
    return Detection(Box(x, y, w, h), float(weights.sum()), support=len({p for _, _, p in cluster}))


@dataclass(frozen=True)
class PetPolicy:
    """When detections count as a pet. Defaults are calibrated for `HaarPetDetector`: chelsea and its
    variants score 17-33 with 3-4 agreeing passes; the best image without a cat (skimage's coins,
    which carry portraits) scored 6 from 2 passes. 10 sits between the two on a log scale."""

    min_score: float = 10.0
    min_support: int = 2


def select_pet(detections: Sequence[Detection], policy: PetPolicy | None = None) -> Detection | None:
    """The best detection the policy accepts, or None."""
    policy = policy or PetPolicy()
    accepted = [d for d in detections if d.score >= policy.min_score and d.support >= policy.min_support]
    return max(accepted, key=lambda d: (d.score, d.support), default=None)


def require_pet(detections: Sequence[Detection], policy: PetPolicy | None = None) -> Detection:
    """Like `select_pet`, but a missing pet is the task's permanent `no_pet_detected` failure."""
    pet = select_pet(detections, policy)
    if pet is None:
        best = max((d.score for d in detections), default=None)
        raise NoPetDetected(f"no pet found in the image (best candidate score: {best})")
    return pet
