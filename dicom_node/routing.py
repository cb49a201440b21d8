"""What gets analysed, and where results go.

Every received instance is stored and fed to the device twin; only chest radiographs a viewer would
present (CR or DX, PA or AP, for presentation, one grey frame) go to the detector. Objects this node
made are never analysed, so a PACS that forwards everything back cannot start a loop.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicom_node.config import Config, Destination, RoutingConfig
from dicom_node.results import is_own_object

DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value or "").strip().upper()


def skip_reason(ds: Dataset, rules: RoutingConfig) -> str | None:
    """None when the detector should see this image, else the reason it is skipped (recorded)."""
    if is_own_object(ds):
        return "made by this node (not analysed again)"
    modality = _text(ds, "Modality")
    if modality not in [m.upper() for m in rules.modalities]:
        return f"modality {modality or 'missing'} is not analysed (routing.modalities)"
    for_processing = str(ds.get("SOPClassUID", "")) == DX_FOR_PROCESSING or \
        _text(ds, "PresentationIntentType") == "FOR PROCESSING"
    if rules.require_for_presentation and for_processing:
        return "a FOR PROCESSING image (routing.require_for_presentation)"
    body = _text(ds, "BodyPartExamined")
    if body not in [b.upper() for b in rules.body_parts]:
        return f"body part {body or 'missing'} is not analysed (routing.body_parts)"
    view = _text(ds, "ViewPosition")
    if view not in [v.upper() for v in rules.views] and not (view == "" and body == "CHEST"):
        return f"view {view or 'missing'} is not analysed (routing.views)"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "a colour image (a chest radiograph is greyscale)"
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return "a multi-frame image (a chest radiograph has one frame)"
    return None


def destinations_for(cfg: Config, calling_ae: str | None) -> list[Destination]:
    """Destinations for results of an instance sent by ``calling_ae``.

    A destination named in ``delivery.return_to_sender`` receives only the results of the calling AE
    titles mapped to it; every other destination receives all results.
    """
    reserved = set(cfg.delivery.return_to_sender.values())
    mapped = cfg.delivery.return_to_sender.get((calling_ae or "").strip())
    return [d for d in cfg.destinations if d.name not in reserved or d.name == mapped]
