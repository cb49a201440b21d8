"""The presentation state draws the boxes over its source and displays it like the source."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.results.display import NO_FINDING_TEXT
from dicom_node.results.geometry import box_polyline
from dicom_node.results.gsps import LAYER_NAME, build_gsps

from .support import MODEL, NODE, built, load, source_names


@source_names
def test_gsps_references_its_source_and_draws_every_box(name: str) -> None:
    source, detections, results = built(name)
    gsps = results["gsps"]
    [series] = gsps.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert gsps.StudyInstanceUID == source.StudyInstanceUID
    assert [layer.GraphicLayer for layer in gsps.GraphicLayerSequence] == [LAYER_NAME]
    [annotation] = gsps.GraphicAnnotationSequence
    assert annotation.GraphicLayer == LAYER_NAME
    graphics = annotation.get("GraphicObjectSequence", [])
    assert len(graphics) == len(detections)
    for graphic, det in zip(graphics, detections, strict=True):
        assert (graphic.GraphicType, graphic.GraphicAnnotationUnits) == ("POLYLINE", "PIXEL")
        points = np.array(graphic.GraphicData, dtype=np.float32).reshape(-1, 2)
        np.testing.assert_allclose(points, box_polyline(det.box), atol=1e-3)
    texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    if detections:
        assert texts == [f"{d.label} {d.score:.2f}" for d in detections]
    else:
        assert texts == [NO_FINDING_TEXT]


def test_gsps_carries_the_source_window_and_modality_lut() -> None:
    source, detections, results = built("cr-agfa")
    gsps = results["gsps"]
    assert float(gsps.RescaleSlope) == pytest.approx(float(source.RescaleSlope))
    assert float(gsps.RescaleIntercept) == pytest.approx(float(source.RescaleIntercept))
    [voi] = gsps.SoftcopyVOILUTSequence
    assert float(voi.WindowCenter) == pytest.approx(1600)
    assert float(voi.WindowWidth) == pytest.approx(2800)
    assert gsps.PresentationLUTShape == "INVERSE"  # MONOCHROME1 source


def test_gsps_of_a_16_bit_source_without_voi_gets_a_full_range_window() -> None:
    source, _ = load("dx-lateral-novoi")
    gsps = build_gsps(source, [], MODEL, NODE)
    [voi] = gsps.SoftcopyVOILUTSequence
    pixels = source.pixel_array
    assert float(voi.WindowCenter) == pytest.approx((int(pixels.min()) + int(pixels.max())) / 2)
    assert gsps.PresentationLUTShape == "IDENTITY"


def test_gsps_of_an_8_bit_rsna_source_keeps_identity() -> None:
    _, _, results = built("rsna-00436515")
    gsps = results["gsps"]
    assert "SoftcopyVOILUTSequence" not in gsps
    assert gsps.PresentationLUTShape == "IDENTITY"


def test_gsps_carries_a_voi_lut_sequence() -> None:
    source, _, results = built("dx-voilut")
    [voi] = results["gsps"].SoftcopyVOILUTSequence
    [lut] = voi.VOILUTSequence
    # Softcopy VOI LUT entries have 8 or 16 bits: the 12-bit table is rescaled to 16 bits
    assert list(lut.LUTDescriptor) == [4096, 0, 16]
    data = np.frombuffer(lut.LUTData, dtype=np.uint16) if isinstance(lut.LUTData, bytes) \
        else np.asarray(lut.LUTData)
    source_data = np.asarray(source.VOILUTSequence[0].LUTData, dtype=float)
    np.testing.assert_allclose(data / 65535, source_data / 4095, atol=1e-4)
