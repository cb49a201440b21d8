"""What gets analysed, and where results go.

Every received instance is stored and fed to the device twin; only chest radiographs a viewer would
present (CR or DX, PA or AP, for presentation, one grey frame) go to the detector. Objects this node
made are never analysed, so a PACS that forwards everything back cannot start a loop.

Most de-identified and converted chest films (a Secondary Capture with Modality DX, say) name
neither body part nor view. The node exists for chest films, so a CR or DX whose Body Part Examined
or View Position is empty is analysed as a frontal chest film and the assumption is recorded (in the
SR, in ``dicom-node results``); ``routing.assume_chest_when_unlabelled: false`` turns that off. A
value the header does give is always read: a lateral view, a hand, a FOR PROCESSING image is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicom_node.config import Config, Destination, RoutingConfig
from dicom_node.results import Assumption, is_own_object

DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


@dataclass(frozen=True)
class Route:
    """What routing decided for one image: skipped (``skip`` says why, and is recorded) or analysed,
    with what was assumed because the header left it empty."""

    skip: str | None = None
    assumptions: tuple[Assumption, ...] = ()

    @property
    def analysed(self) -> bool:
        return self.skip is None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value or "").strip().upper()


def decide(ds: Dataset, rules: RoutingConfig) -> Route:
    """Whether the detector should see this image (its header only), and what it assumes.

    An empty or absent Body Part Examined or View Position is accepted as chest or frontal view
    when ``rules.assume_chest_when_unlabelled`` is on, or when ``""`` is listed in
    ``rules.body_parts`` / ``rules.views``; the route then carries :class:`Assumption` items.
    A value the header gives must be listed. Pure: the same header and rules give the same route.
    """
    if is_own_object(ds):
        return Route("made by this node (not analysed again)")
    modality = _text(ds, "Modality")
    if modality not in [m.upper() for m in rules.modalities]:
        return Route(f"modality {modality or 'missing'} is not analysed (routing.modalities)")
    for_processing = str(ds.get("SOPClassUID", "")) == DX_FOR_PROCESSING or \
        _text(ds, "PresentationIntentType") == "FOR PROCESSING"
    if rules.require_for_presentation and for_processing:
        return Route("a FOR PROCESSING image (routing.require_for_presentation)")
    assumptions: list[Assumption] = []
    for keyword, allowed, key, what, assumption in (
        ("BodyPartExamined", rules.body_parts, "body_parts", "body part", Assumption.CHEST),
        ("ViewPosition", rules.views, "views", "view", Assumption.FRONTAL),
    ):
        value = _text(ds, keyword)
        listed = [v.strip().upper() for v in allowed]
        if value:
            if value not in listed:
                return Route(f"{what} {value} is not analysed (routing.{key})")
        elif rules.assume_chest_when_unlabelled or "" in listed:
            assumptions.append(assumption)
        else:
            return Route(f"{what} missing is not analysed (routing.{key}, routing.assume_chest_when_unlabelled)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return Route("a colour image (a chest radiograph is greyscale)")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return Route("a multi-frame image (a chest radiograph has one frame)")
    megapixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) / 1e6
    if megapixels > rules.max_megapixels:
        return Route(f"an image of {megapixels:.0f} megapixels, over routing.max_megapixels "
                     f"({rules.max_megapixels:g}): stored, not decoded")
    return Route(assumptions=tuple(assumptions))


def destinations_for(cfg: Config, calling_ae: str | None) -> list[Destination]:
    """Destinations for results of an instance sent by ``calling_ae``.

    A destination named in ``delivery.return_to_sender`` receives only the results of the calling AE
    titles mapped to it; every other destination receives all results.
    """
    reserved = set(cfg.delivery.return_to_sender.values())
    mapped = cfg.delivery.return_to_sender.get((calling_ae or "").strip())
    return [d for d in cfg.destinations if d.name not in reserved or d.name == mapped]
