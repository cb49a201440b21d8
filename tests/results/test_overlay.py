"""The Secondary Capture shows the image as a viewer would, with the findings burned in."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.results.display import display_pixels, reduction
from dicom_node.results.overlay import BOX_COLOR, MAX_SIDE, build_overlay
from dicom_node.results.source import source_header

from .support import MODEL, NODE, built, load, source_names


@source_names
def test_overlay_is_derived_from_its_source(name: str) -> None:
    source, _, results = built(name)
    sc = results["sc"]
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    [reference] = sc.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert sc.BurnedInAnnotation == "YES"
    k = reduction(int(source.Rows), int(source.Columns), MAX_SIDE)  # 1 but for the large DX
    assert (sc.Rows, sc.Columns) == (source.Rows // k, source.Columns // k)
    assert sc.PhotometricInterpretation == "RGB"
    assert "DERIVED" in sc.ImageType


def test_boxes_are_drawn_in_colour_on_the_displayed_image() -> None:
    _, detections, results = built("rsna-00436515")
    pixels = results["sc"].pixel_array
    x0, y0, x1, y1 = (int(v) for v in detections[0].box)
    edge = pixels[(y0 + y1) // 2, x0]  # middle of the box's left edge
    assert tuple(edge) == BOX_COLOR
    centre = pixels[(y0 + y1) // 2, (x0 + x1) // 2]
    assert centre[0] == centre[1] == centre[2]  # the radiograph stays grey inside


def test_banner_and_negative_text_are_burned_in() -> None:
    source, _, results = built("rsna-0004cfab")
    pixels = results["sc"].pixel_array.astype(int)
    banner = pixels[: source.Rows // 40]
    assert (banner == 255).all(axis=2).any()  # white text
    assert (banner == 0).all(axis=2).mean() > 0.5  # on black
    # the image below is the source as displayed (RSNA: 8 bit, no VOI, MONOCHROME2)
    displayed = display_pixels(source, source_header(source))
    assert np.array_equal(pixels[-10:, :, 0], displayed[-10:])


def test_lossy_source_stays_lossy() -> None:
    _, _, results = built("rsna-00436515")
    assert results["sc"].LossyImageCompression == "01"
    assert results["sc"].LossyImageCompressionMethod == "ISO_10918_1"


def test_monochrome1_source_is_inverted_for_display() -> None:
    source, detections = load("dx-mono1-16bit")
    header = source_header(source)
    displayed = display_pixels(source, header)
    raw = source.pixel_array
    # MONOCHROME1: the highest value is the darkest
    assert displayed[np.unravel_index(raw.argmax(), raw.shape)] < displayed[np.unravel_index(
        raw.argmin(), raw.shape)]
    sc = build_overlay(source, detections, MODEL, NODE)
    assert sc.PatientOrientation == ["R", "F"]
    assert "PixelSpacing" not in sc  # source has Imager Pixel Spacing only


def test_voi_lut_sequence_is_applied_for_display() -> None:
    source, _ = load("dx-voilut")
    displayed = display_pixels(source, source_header(source))
    raw = source.pixel_array.astype(float)
    expected = np.round(np.sqrt(raw / 4095) * 255)
    assert np.abs(displayed - expected).max() <= 1


def test_a_large_source_gives_an_overlay_of_sane_size_with_its_boxes_scaled() -> None:
    source, detections, results = built("dx-large")  # 4480 x 3584 at 0.1 mm
    sc = results["sc"]
    assert (sc.Rows, sc.Columns) == (4480 // 3, 3584 // 3) and max(sc.Rows, sc.Columns) <= MAX_SIDE
    assert [float(v) for v in sc.PixelSpacing] == pytest.approx([0.3, 0.3])
    assert "reduced 3-fold" in sc.DerivationDescription
    x0, y0, x1, y1 = (v / 3 for v in detections[0].box)
    assert tuple(sc.pixel_array[int((y0 + y1) / 2), int(x0)]) == BOX_COLOR
    assert sc.pixel_array.nbytes < 10_000_000  # was 48 MB at the source's size
