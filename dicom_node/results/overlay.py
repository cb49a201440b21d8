"""The detections of one radiograph burned into a Secondary Capture image.

PS3.3 A.8.1 SC Image: the source as a viewer shows it (Modality LUT, VOI window or LUT,
MONOCHROME1 inverted; see :func:`display.display_pixels`), in 8-bit RGB so that the boxes can be
coloured, with each box and its score drawn in, a banner "AI RESULT — NOT FOR PRIMARY DIAGNOSIS"
with the model and its version, and "no opacity detected" on a negative image. It keeps the
source's pixel grid (or a whole-factor reduction of it), study and patient, lives in its own
series, references the source in Source Image Sequence and says Burned In Annotation YES. For any
PACS or viewer that shows images only.

A source larger than :data:`MAX_SIDE` on its longer side is reduced by a whole factor (block mean)
before it is rendered, boxes and Pixel Spacing scaled with it: an overlay is for looking at, and a
10000 x 10000 source would otherwise give a 300 MB RGB image (issue 12).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from models.detection import Detection, ModelInfo

from .codes import SOURCE_FOR_PROCESSING, ihe_coding_scheme
from .display import BANNER_TEXT, NO_FINDING_TEXT, display_pixels, reduction
from .geometry import score_text
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

#: Longest side of an overlay; a larger source is reduced by a whole factor to fit.
MAX_SIDE = 2048
BOX_COLOR = (255, 221, 0)  # yellow, as the GSPS layer's recommended colour
TEXT_COLOR = (255, 255, 255)
BACKGROUND = (0, 0, 0)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, int(size)))


EM_DASH = "\u2014"


def _text_width(draw: ImageDraw.ImageDraw, text: str,
                font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> float:
    return draw.textlength(text.replace(EM_DASH, "M"), font=font)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
          font: ImageFont.FreeTypeFont | ImageFont.ImageFont, fill: tuple[int, int, int]) -> None:
    """Draw ``text``, em dashes as lines: Pillow's built-in font has no glyph for them."""
    x, y = xy
    left, top, right, bottom = draw.textbbox((0, 0), "x", font=font)
    middle = y + (top + bottom) / 2.0
    for i, part in enumerate(text.split(EM_DASH)):
        if i:
            dash = draw.textlength("M", font=font)
            draw.line((x + dash * 0.1, middle, x + dash * 0.9, middle), fill=fill,
                      width=max(1, round((bottom - top) / 6)))
            x += dash
        draw.text((x, y), part, font=font, fill=fill)
        x += draw.textlength(part, font=font)


def _fit_lines(draw: ImageDraw.ImageDraw, lines: list[str], size: int, width: int
               ) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int]:
    """The largest font, at most ``size``, with which every line fits ``width`` pixels."""
    while True:
        font = _font(size)
        widest = max(_text_width(draw, line, font) for line in lines)
        if widest <= width * 0.98 or size <= 6:
            return font, size
        size = max(6, int(size * width * 0.98 / widest))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
           font: ImageFont.FreeTypeFont | ImageFont.ImageFont, color: tuple[int, int, int]) -> None:
    """Text on a black plate, so it reads on any part of a radiograph."""
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=BACKGROUND)
    draw.text(xy, text, font=font, fill=color)


def burn_in(gray: np.ndarray, detections: Sequence[Detection], model: ModelInfo) -> np.ndarray:
    """Draw the banner, the boxes with their scores (or "no opacity detected") into an RGB copy of
    the 8-bit display image ``gray``; sizes scale with the image."""
    rows, columns = gray.shape
    image = Image.fromarray(gray, mode="L").convert("RGB")
    draw = ImageDraw.Draw(image)
    scale = max(rows, columns) / 1024.0
    line_width = max(1, round(3 * scale))

    # Banner across the top: warning and model version, on one line or two
    base = max(10, round(24 * scale))
    banner = [f"{BANNER_TEXT} | {model.name} {model.version}"]
    font, size = _fit_lines(draw, banner, base, columns)
    if size < base * 0.75:
        banner = [BANNER_TEXT, f"{model.name} {model.version}"]
        font, size = _fit_lines(draw, banner, base, columns)
    band = int(len(banner) * size * 1.25 + size * 0.5)
    draw.rectangle((0, 0, columns, band), fill=BACKGROUND)
    for i, line in enumerate(banner):
        _text(draw, (size * 0.4, size * 0.25 + i * size * 1.25), line, font, TEXT_COLOR)

    label_size = max(8, round(20 * scale))
    label_font = _font(label_size)
    for det in detections:
        x0, y0, x1, y1 = (float(v) for v in det.box)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=BOX_COLOR,
                       width=line_width)
        y_text = y0 - label_size - 4 if y0 - label_size - 4 >= band else y0 + line_width + 2
        _label(draw, (x0 + line_width, y_text), score_text(det), label_font, BOX_COLOR)
    if not detections:
        _label(draw, (size * 0.4, band + size * 0.5), NO_FINDING_TEXT, font, TEXT_COLOR)
    return np.asarray(image, dtype=np.uint8)


@no_patient_data_in_logs
def build_overlay(
    source: Dataset,
    detections: Sequence[Detection],
    model: ModelInfo,
    node: NodeIdentity,
    *,
    series_number: int = DEFAULT_SERIES_NUMBERS["sc"],
    instance_number: int = 1,
) -> hd.sc.SCImage:
    """Secondary Capture image (PS3.3 A.8.1) of ``source`` with the detections burned in, in the
    source's study and the node's SC series for it."""
    check_inputs(source, detections, model, node)
    check_series_number(series_number)
    header = source_header(source)
    k = reduction(int(header.Rows), int(header.Columns), MAX_SIDE)
    shown = [Detection((d.box[0] / k, d.box[1] / k, d.box[2] / k, d.box[3] / k), d.score, d.label)
             for d in detections]
    pixels = burn_in(display_pixels(source, header, MAX_SIDE), shown, model)
    spacing = header.get("PixelSpacing")

    # Patient, General Study, General Series, SC Equipment, General Image, Image Pixel, SC Image,
    # SOP Common (highdicom)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid(source, node, "sc"),
        series_number=series_number,
        sop_instance_uid=fresh_uid(),
        instance_number=instance_number,
        manufacturer=node.manufacturer,
        # highdicom annotates tuple[int, int] but means millimetres
        pixel_spacing=(float(spacing[0]) * k, float(spacing[1]) * k) if spacing else None,  # type: ignore[arg-type]
        # highdicom insists on an orientation; it is replaced by the source's just below
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[algorithm_equipment(model)],
        series_description=SERIES_DESCRIPTIONS["sc"],
        coding_schemes=[ihe_coding_scheme()],
    )

    # Patient, General Study, Patient Study
    copy_patient_study(sc, header)

    # General Series
    sc.BodyPartExamined = body_part_examined(header)

    # General Equipment
    general_equipment(sc, node)

    # SC Equipment: made on a workstation from a digital image
    sc.ConversionType = "WSD"

    # General Image: the source's pixel grid (or reduced), so the source's Patient Orientation (type 2)
    sc.add_new(0x00200020, "CS", header.get("PatientOrientation") or "")  # Patient Orientation
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = (
        "Source rendered for display (Modality LUT, VOI, MONOCHROME1 inverted"
        + (f", reduced {k}-fold" if k > 1 else "") + ") with AI findings "
        f"burned in by {model.name} {model.version}"
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.SOPClassUID
    reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(SOURCE_FOR_PROCESSING)]
    sc.SourceImageSequence = [reference]
    # A lossy source stays lossy in what is derived from it (PS3.3 C.7.6.1.1.5)
    if header.get("LossyImageCompression") == "01":
        for keyword in ("LossyImageCompression", "LossyImageCompressionRatio",
                        "LossyImageCompressionMethod"):
            if keyword in header:
                sc[header[keyword].tag] = header[keyword]
    else:
        sc.LossyImageCompression = "00"
    return sc
