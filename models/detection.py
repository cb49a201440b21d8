"""What the detector returns, in the source image's pixel grid.

These two small value types are the contract between ``models`` (which makes them) and the node's
result objects (which turn them into TID 1500 SR, GSPS and Secondary Capture).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Detection:
    """One finding: a box ``(x0, y0, x1, y1)`` in source pixel coordinates, columns then rows.

    Coordinates follow PS3.3 C.10.5.1.2 (Graphic Data): (0, 0) is the top-left corner of the
    top-left pixel, so a box covering the whole image is ``(0, 0, columns, rows)``.
    """

    box: tuple[float, float, float, float]
    score: float
    label: str = "opacity"

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


def image_probability(detections: Sequence[Detection]) -> float:
    """The image-level answer: the probability that an opacity is present, the best box's score.

    An image is as suspicious as its most suspicious box (every box the model proposes, not only
    those above the reporting threshold); an image with no box at all scores 0.
    """
    return max((float(d.score) for d in detections), default=0.0)


@dataclass(frozen=True)
class ImageAnalysis:
    """What the detector says about one image: findings at or above its threshold, and how likely
    the image is to hold an opacity at all (for worklist sorting; see :func:`image_probability`)."""

    detections: tuple[Detection, ...]
    opacity_probability: float


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the algorithm that produced detections (for Contributing Equipment, TID 4019)."""

    name: str
    version: str
    device_uid: str
    classes: tuple[str, ...] = ("opacity",)
    input_size: int = 512
    score_threshold: float = 0.4
    extra: dict[str, str] = field(default_factory=dict)
