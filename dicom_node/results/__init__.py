"""Result objects the node sends back to PACS: TID 1500 SR, GSPS and Secondary Capture.

One module per DICOM object kind (``sr``, ``gsps``, ``overlay``); what they share lives in modules
named for what they hold: ``identity`` (the node, the algorithm, result series), ``source`` (the
checked source header), ``codes``, ``geometry``, ``display``, ``assumptions`` and ``logsafe``.
:func:`build_all` is what the worker calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset

from models.detection import Detection, ModelInfo

from .assumptions import Assumption
from .gsps import build_gsps
from .identity import RESULT_KINDS, NodeIdentity, ResultKind
from .overlay import build_overlay
from .source import is_own_object
from .sr import build_sr

__all__ = [
    "RESULT_KINDS",
    "Assumption",
    "NodeIdentity",
    "ResultKind",
    "build_all",
    "build_gsps",
    "build_overlay",
    "build_sr",
    "is_own_object",
]


def build_all(
    source: Dataset,
    detections: Sequence[Detection],
    model: ModelInfo,
    node: NodeIdentity,
    kinds: Iterable[ResultKind] = RESULT_KINDS,
    ohif: bool = False,
    opacity_probability: float | None = None,
    assumptions: Sequence[Assumption] = (),
) -> dict[str, Dataset]:
    """Build the requested result kinds for one analysed radiograph.

    Returns ``{"sr": Comprehensive3DSR, "gsps": GrayscaleSoftcopyPresentationState,
    "sc": SCImage}`` (only the kinds asked for), each with a fresh SOP Instance UID and the
    node's stable series for that kind in the source's study. ``ohif``, the image-level
    ``opacity_probability`` and the ``assumptions`` routing made (chest, frontal view, for a source
    whose header leaves them empty) apply to the SR only.
    """
    wanted = list(dict.fromkeys(kinds))
    unknown = [k for k in wanted if k not in RESULT_KINDS]
    if unknown:
        raise ValueError(f"kinds must be among {RESULT_KINDS}, got {unknown}")
    results: dict[str, Dataset] = {}
    for kind in wanted:
        if kind == "sr":
            results[kind] = build_sr(
                source, detections, model, node, ohif=ohif, opacity_probability=opacity_probability,
                assumptions=assumptions,
            )
        elif kind == "gsps":
            results[kind] = build_gsps(source, detections, model, node)
        else:
            results[kind] = build_overlay(source, detections, model, node)
    return results
