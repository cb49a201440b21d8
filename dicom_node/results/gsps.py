"""The detections of one radiograph as a Grayscale Softcopy Presentation State.

PS3.3 A.33.1 GSPS: it references the source image, draws each box as a closed POLYLINE in PIXEL
units with its score as text, all on one graphic layer (``AI_OPACITY``) that viewers can switch
off, and says "no opacity detected" on a negative image. It carries the source's Modality LUT and
VOI (window or LUT) and inverts a MONOCHROME1 source, so the image looks as it does without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from models.detection import Detection, ModelInfo

from .codes import ihe_coding_scheme
from .display import NO_FINDING_TEXT, auto_window, has_voi, modality_pixels
from .geometry import box_polyline, score_text
from .identity import (
    DEFAULT_SERIES_NUMBERS,
    SERIES_DESCRIPTIONS,
    NodeIdentity,
    algorithm_equipment,
    check_series_number,
    fresh_uid,
    general_equipment,
    series_uid,
)
from .logsafe import no_patient_data_in_logs
from .source import body_part_examined, check_inputs, copy_patient_study, source_header

#: Graphic Layer (CS, at most 16 characters) holding every annotation of the node.
LAYER_NAME = "AI_OPACITY"
CONTENT_LABEL = "AI_OPACITY"
CONTENT_DESCRIPTION = "AI opacity detection boxes (not for primary diagnosis)"
#: Recommended display colour of the layer: yellow, CIELab (PS3.3 C.10.7.1.1).
LAYER_COLOR = hd.color.CIELabColor(97.0, -21.0, 94.0)


def _text_box(det: Detection, rows: int, columns: int) -> tuple[float, float, float, float]:
    """Bounding box (left, top, right, bottom) for a box's score text: just above the box, or
    below it or inside its top edge when the image edge is too close. Always within the image."""
    x0, y0, x1, y1 = (float(v) for v in det.box)
    height = max(8.0, rows * 0.03)
    width = max(x1 - x0, columns * 0.15)
    left = min(x0, max(0.0, columns - width))
    right = min(float(columns), left + width)
    if y0 - height >= 0.0:
        top, bottom = y0 - height, y0
    elif y1 + height <= rows:
        top, bottom = y1, y1 + height
    else:
        top, bottom = y0, min(float(rows), y0 + height)
    return left, top, right, bottom


def _annotation(header: Dataset, detections: Sequence[Detection],
                layer: hd.pr.GraphicLayer) -> hd.pr.GraphicAnnotation:
    """Graphic Annotation module content (PS3.3 C.10.5): boxes and texts on ``layer``."""
    rows, columns = int(header.Rows), int(header.Columns)
    graphics = [
        hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=box_polyline(det.box),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            tracking_id=f"{det.label} {number}",
            tracking_uid=fresh_uid(),
        )
        for number, det in enumerate(detections, start=1)
    ]
    texts = [
        hd.pr.TextObject(
            text_value=score_text(det),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            bounding_box=_text_box(det, rows, columns),
            text_justification=hd.pr.TextJustificationValues.LEFT,
        )
        for det in detections
    ]
    if not detections:
        texts.append(
            hd.pr.TextObject(
                text_value=NO_FINDING_TEXT,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=(columns * 0.02, rows * 0.02, columns * 0.6, rows * 0.08),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        )
    return hd.pr.GraphicAnnotation(
        referenced_images=[header],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=texts or None,
    )


def _softcopy_lut(item: Dataset) -> hd.VOILUT:
    """A source VOI LUT item for the Softcopy VOI LUT module, where entries have 8 or 16 bits
    (PS3.3 C.11.8): a 9 to 15-bit table is rescaled to 16 bits so that it looks the same."""
    entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    raw = item.LUTData
    if isinstance(raw, bytes):
        data = np.frombuffer(raw, dtype=np.uint16 if len(raw) >= 2 * entries else np.uint8)
    else:
        data = np.asarray(raw)
    data = data[:entries].astype(np.float64)
    if bits == 8:
        table = data.astype(np.uint8)
    else:
        table = np.round(data * (65535.0 / (2**bits - 1))).astype(np.uint16)
    return hd.VOILUT(first_mapped_value=first_mapped, lut_data=table,
                     lut_explanation=item.get("LUTExplanation"))


def _voi(source: Dataset, header: Dataset) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """Softcopy VOI LUT (PS3.3 C.11.8): the source's window(s) and VOI LUT.

    None lets highdicom copy the source's windows. A source of more than 8 bits without any VOI
    gets a window over its full range, as viewers show such an image; an identity VOI would show
    it dark.
    """
    if "VOILUTSequence" in header:
        windowed = "WindowCenter" in header and "WindowWidth" in header
        return [
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=header.WindowCenter if windowed else None,
                window_width=header.WindowWidth if windowed else None,
                voi_luts=[_softcopy_lut(item) for item in header.VOILUTSequence],
            )
        ]
    if has_voi(header) or int(header.get("BitsStored", 8)) <= 8:
        return None
    center, width = auto_window(modality_pixels(source))
    return [
        hd.pr.SoftcopyVOILUTTransformation(
            window_center=center, window_width=width, window_explanation="FULL RANGE"
        )
    ]


@no_patient_data_in_logs
def build_gsps(
    source: Dataset,
    detections: Sequence[Detection],
    model: ModelInfo,
    node: NodeIdentity,
    *,
    series_number: int = DEFAULT_SERIES_NUMBERS["gsps"],
    instance_number: int = 1,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Grayscale Softcopy Presentation State (PS3.3 A.33.1) drawing the detections over
    ``source`` on the toggleable graphic layer :data:`LAYER_NAME`, in the source's study and the
    node's GSPS series for it."""
    check_inputs(source, detections, model, node)
    check_series_number(series_number)
    header = source_header(source)

    # Graphic Layer
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER_NAME,
        order=1,
        description=f"{model.name} {model.version}"[:64],
        display_color=LAYER_COLOR,
    )

    # Softcopy Presentation LUT: MONOCHROME1 shows inverted, as the source does without a GSPS
    shape = (
        hd.PresentationLUTShapeValues.INVERSE
        if header.PhotometricInterpretation == "MONOCHROME1"
        else hd.PresentationLUTShapeValues.IDENTITY
    )

    # Presentation Series, Presentation State Identification and Relationship, Displayed Area,
    # Graphic Annotation, Graphic Layer, Modality LUT, Softcopy VOI LUT (highdicom)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[header],
        series_instance_uid=series_uid(source, node, "gsps"),
        series_number=series_number,
        sop_instance_uid=fresh_uid(),
        instance_number=instance_number,
        manufacturer=node.manufacturer,
        manufacturer_model_name=node.model_name,
        software_versions=node.software_version,
        device_serial_number=node.device_uid,
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        graphic_annotations=[_annotation(header, detections, layer)],
        graphic_layers=[layer],
        institution_name=node.institution_name,
        institutional_department_name=node.institutional_department_name,
        voi_lut_transformations=_voi(source, header),
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=shape
        ),
        series_description=SERIES_DESCRIPTIONS["gsps"],
        contributing_equipment=[algorithm_equipment(model)],
        coding_schemes=[ihe_coding_scheme()],
    )

    # Patient, General Study, Patient Study
    copy_patient_study(gsps, header)

    # General Series
    gsps.BodyPartExamined = body_part_examined(header)

    # General Equipment
    general_equipment(gsps, node)
    return gsps
