"""Sources and detections for the result-object tests.

Sources: the nine real RSNA radiographs (shared/data/rsna-cxr-sample), a real CR from pydicom's
test files (MONOCHROME1, 12 bit, rescale and window; pydicom 3 no longer ships "CR_small.dcm"),
two constructed DX sources (MONOCHROME1 16 bit with window; MONOCHROME2 12 bit lateral without
any VOI), and an RSNA radiograph made unlabelled (Secondary Capture, Modality DX, no body part, no
view), whose results carry the chest and frontal view routing assumes. Detections are the RSNA
challenge's own boxes from labels.csv.
"""

from __future__ import annotations

import csv
import functools
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from dicom_node.results import Assumption, build_all
from dicom_node.results.identity import NodeIdentity
from dicom_node.testing import RSNA_DIR, require
from models.detection import Detection, ModelInfo

RSNA: Path | None = RSNA_DIR if RSNA_DIR.is_dir() else None


def missing(what: str) -> None:
    """Skip on a developer's machine; fail in CI, where a missing peer is an error."""
    require(False, what)


def with_voi_lut(ds: Dataset) -> Dataset:
    """The 12-bit source with a VOI LUT Sequence (a gamma curve) instead of a window, PA view."""
    entries = 2 ** int(ds.BitsStored)
    lut = Dataset()
    lut.LUTDescriptor = [entries, 0, 12]
    lut.LUTExplanation = "GAMMA 0.5"
    lut.add_new(0x00283006, "US",  # LUT Data
                (np.sqrt(np.arange(entries) / (entries - 1)) * 4095).astype(np.uint16).tolist())
    ds.VOILUTSequence = [lut]
    ds.ViewPosition = "PA"
    return ds


def rsna_files() -> list[Path]:
    return sorted((RSNA / "images").glob("*.dcm")) if RSNA else []


def rsna_labels() -> dict[str, list[Detection]]:
    """labels.csv boxes, x,y,w,h -> x0,y0,x1,y1, with made-up but fixed scores."""
    labels: dict[str, list[Detection]] = {}
    if RSNA is None:
        return labels
    with open(RSNA / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            dets = labels.setdefault(row["patientId"], [])
            if row["Target"] == "1":
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                dets.append(Detection(box=(x, y, x + w, y + h), score=0.95 - 0.2 * len(dets)))
    return labels


def cr_file() -> str:
    path = get_testdata_file("6154")  # dicomdirtests/77654033/CR1/6154: a real Agfa CR
    assert path is not None, "pydicom's test CR file is missing"
    return path


def constructed_dx(*, monochrome1: bool = True) -> Dataset:
    """A DX For Presentation source made here: a chest-like gradient in 14 of 16 bits.

    ``monochrome1``: MONOCHROME1 with rescale, two windows, Patient Orientation R\\F (image
    flipped: the patient's right on the image right), an invalid Patient's Age and Study
    Description. Otherwise: MONOCHROME2, 12 bits, lateral view, no VOI, no orientation, no Study
    ID or Accession Number.
    """
    rows, columns = 320, 256
    yy, xx = np.mgrid[0:rows, 0:columns]
    bits = 14 if monochrome1 else 12
    body = np.exp(-(((xx - columns / 2) / (columns / 3)) ** 2 + ((yy - rows / 2) / (rows / 2.2)) ** 2))
    pixels = (body * (2**bits - 200) + 100).astype(np.uint16)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Test^Chest"
    ds.PatientID = "PHANTOM-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "Phantom Works"
    ds.ManufacturerModelName = "DX-1"
    ds.BodyPartExamined = "CHEST"
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if monochrome1:
        ds.StudyID = "S1"
        ds.AccessionNumber = "A1"
        with warnings.catch_warnings():  # pydicom warns on assignment of invalid values
            warnings.simplefilter("ignore")
            ds.PatientAge = "45"  # invalid AS: must not be copied
            ds.StudyDescription = "X" * 80  # invalid LO (too long): must not be copied
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.ViewPosition = "PA"
        ds.PatientOrientation = ["R", "F"]
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.WindowCenter = [str(2**bits // 2), "4000"]
        ds.WindowWidth = [str(2**bits), "3000"]
        ds.VOILUTFunction = "LINEAR"
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.ViewPosition = "LL"
    ds.PixelData = pixels.tobytes()
    return ds



SOURCE_NAMES: list[str] = [f"rsna-{p.stem[:8]}" for p in rsna_files()] or ["rsna-missing"]
SOURCE_NAMES += ["cr-agfa", "dx-mono1-16bit", "dx-lateral-novoi", "dx-voilut", "sc-dx-unlabelled", "dx-large"]

#: What routing assumes for a source (the unlabelled film: chest and frontal view); none for the rest.
ASSUMED: dict[str, tuple[Assumption, ...]] = {"sc-dx-unlabelled": (Assumption.CHEST, Assumption.FRONTAL)}


def unlabelled_dx(path: Path) -> Dataset:
    """A real RSNA radiograph as de-identified, converted chest films arrive: a Secondary Capture with
    Modality DX that names neither body part nor view (the issue 11 COVID collection's DX)."""
    ds = pydicom.dcmread(path)
    ds.Modality = "DX"
    del ds.BodyPartExamined, ds.ViewPosition
    return ds


def large_dx() -> Dataset:
    """:func:`constructed_dx` blown up 14-fold to 4480 x 3584 with Pixel Spacing 0.1 mm: larger than
    an overlay may be (``overlay.MAX_SIDE``)."""
    ds = constructed_dx(monochrome1=True)
    pixels = np.frombuffer(ds.PixelData, np.uint16).reshape(int(ds.Rows), int(ds.Columns))
    big = np.kron(pixels, np.ones((14, 14), np.uint16))
    ds.Rows, ds.Columns = big.shape
    ds.PixelSpacing = ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.PixelData = big.tobytes()
    return ds


def load(name: str) -> tuple[Dataset, list[Detection]]:
    """The source called ``name`` and realistic detections for it ([] for a negative image)."""
    if name.startswith("rsna-"):
        if RSNA is None:
            missing("shared/data/rsna-cxr-sample")
        path = next(p for p in rsna_files() if p.stem.startswith(name[5:]))
        return pydicom.dcmread(path), rsna_labels()[path.stem]
    if name == "cr-agfa":
        return pydicom.dcmread(cr_file()), [
            Detection(box=(2, 2, 7, 8), score=0.81), Detection(box=(9, 3, 14, 12), score=0.45)
        ]
    if name == "dx-mono1-16bit":
        return constructed_dx(monochrome1=True), [
            Detection(box=(30.5, 60.25, 110, 200), score=0.88),
            Detection(box=(150, 70, 230, 210), score=0.62),
        ]
    if name == "dx-lateral-novoi":
        return constructed_dx(monochrome1=False), []
    if name == "sc-dx-unlabelled":
        if RSNA is None:
            missing("shared/data/rsna-cxr-sample")
        labels = rsna_labels()
        path = next(p for p in rsna_files() if labels[p.stem])
        return unlabelled_dx(path), labels[path.stem]
    if name == "dx-large":
        return large_dx(), [Detection(box=(420.0, 840.0, 1540.0, 2800.0), score=0.88)]
    if name == "dx-voilut":
        return with_voi_lut(constructed_dx(monochrome1=False)), [
            Detection(box=(20, 40, 120, 300), score=0.71)
        ]
    raise KeyError(name)


source_names = pytest.mark.parametrize("name", SOURCE_NAMES)

MODEL = ModelInfo(
    name="Cascade R-CNN R50-FPN",
    version="2024.1",
    device_uid="1.2.826.0.1.3680043.8.498.10",
    score_threshold=0.4,
    extra={"nms": "0.5"},
)
NODE = NodeIdentity(ae_title="DICOM_NODE", device_uid="1.2.826.0.1.3680043.8.498.20")


@functools.cache
def built(name: str) -> tuple[Dataset, list[Detection], dict[str, Dataset]]:
    """Source, detections and all three results for it (with the image-level probability the detector
    gives: its best box, or a low score below the threshold for a negative), built once per session."""
    source, detections = load(name)
    probability = max((d.score for d in detections), default=0.12)
    return source, detections, build_all(source, detections, MODEL, NODE, opacity_probability=probability,
                                         assumptions=ASSUMED.get(name, ()))
