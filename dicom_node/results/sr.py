"""The detections of one radiograph as a Comprehensive 3D SR with a TID 1500 Measurement Report.

PS3.16 TID 1500 (Measurement Report) with one TID 1410 Planar ROI group per finding: the box as a
closed POLYLINE in the source's pixel coordinates, tracking identifier and UID, finding "Abnormal
opacity", finding site lung with laterality, the score as a TID 1419 measurement, and TID 4019
algorithm identification. One TID 1501 group on the whole image gives the image-level answer:
"Abnormal opacity: Present" or "Absent" (at the model's threshold) with the model's probability that
an opacity is present as a Certainty of Finding, so a worklist can sort by it; an image without
finding always gets this explicit negative. The observer is the node as a device (TID 1004); the
algorithm is also recorded in Contributing Equipment as IHE AI Results (AIR) asks. The Image
Library entry of the source says what it was analysed as (Target Region, Image View) and, for an
unlabelled film, that the chest and frontal view were assumed, not read (see :func:`_image_library`).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from models.detection import Detection, ModelInfo

from .assumptions import Assumption, check_assumptions
from .codes import (
    ABSENT,
    CERTAINTY_OF_FINDING,
    CHEST,
    CHEST_XRAY,
    FRONTAL,
    IMAGE_VIEWS,
    LUNG,
    MORPHOLOGICALLY_ABNORMAL,
    OPACITY,
    PRESENT,
    PROBABILITY,
    ihe_coding_scheme,
)
from .geometry import box_polyline, laterality
from .identity import (
    DEFAULT_SERIES_NUMBERS,
    SERIES_DESCRIPTIONS,
    NodeIdentity,
    algorithm_equipment,
    algorithm_parameters,
    check_series_number,
    fresh_uid,
    general_equipment,
    series_uid,
)
from .logsafe import no_patient_data_in_logs
from .source import check_inputs, copy_patient_study, source_header

#: Geometric purpose of the region (CID 219): the polyline bounds the finding, it is no outline.
BOUNDED_BY = hd.sr.CodedConcept("75958009", "SCT", "Bounded by")


def tracking_identifier(model: ModelInfo, label: str, number: int | str | None, *, ohif: bool) -> str:
    """Tracking Identifier text (TID 4108), unique within the report.

    ``number`` is the finding's number, ``"image"`` for the image-level group of a positive image, or
    None for the explicit negative. Plain: ``"opacity 1"``, ``"opacity (image)"``, ``"no opacity"``.
    OHIF mode: ``"<model>@<version>:<label>:<n>"`` (``image``, ``none``), the
    ``source@version:type`` form OHIF's SR tooling parses (see docs/results.md); the type is no
    Cornerstone tool name, so OHIF shows the findings read-only instead of trying to re-create
    editable tools from them.
    """
    suffix = "none" if number is None else str(number)
    if ohif:
        return f"{model.name}@{model.version}:{label}:{suffix}"
    if number is None:
        return f"no {label}"
    return f"{label} (image)" if number == "image" else f"{label} {suffix}"


def _observation_context(node: NodeIdentity) -> hd.sr.ObservationContext:
    """TID 1001 with the node as device observer (TID 1002, TID 1004)."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(codes.cid270.Device),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=node.device_uid,
                name=node.ae_title.strip(),
                manufacturer_name=node.manufacturer,
                model_name=node.model_name,
            ),
        )
    )


def _coded_modality(header: Dataset) -> hd.sr.CodedConcept:
    """The source's Modality as a CID 29 code (an SC of a chest film stays "CR", not "OT")."""
    modality = str(header.get("Modality", "") or "OT")
    for code in codes.cid29.concepts.values():
        if code.value == modality:
            return hd.sr.CodedConcept.from_code(code)
    return hd.sr.CodedConcept(modality, "DCM", modality)


def _image_library(header: Dataset, assumptions: Sequence[Assumption] = ()) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library with the source (TID 1601, TID 1602, TID 1603 descriptors).

    Built here rather than by highdicom, which requires Patient Orientation and Imager Pixel
    Spacing of every CR/DX image; a descriptor the source lacks is left out (all are optional).
    OHIF's SR viewport reads the referenced images from this library.

    Target Region (TID 1602 row 2) and Image View (TID 1603 row 1) say what the image was analysed
    as: read from Body Part Examined CHEST (PS3.16 Annex L) and View Position, or, for a source
    whose header leaves them empty, the chest and frontal view routing assumed. Each assumption is
    then stated beside them as a TEXT (121106, DCM, "Comment") descriptor, HAS ACQ CONTEXT of the
    image like the other descriptors (TID 1600-1602 are extensible), so a reader sees that the
    value was assumed, not read.
    """
    acq = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    pixels = hd.sr.CodedConcept("{pixels}", "UCUM", "Pixels")
    descriptors: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=codes.DCM.Modality, value=_coded_modality(header),
                              relationship_type=acq),
    ]
    body = str(header.get("BodyPartExamined", "") or "").strip().upper()
    if body == "CHEST" or Assumption.CHEST in assumptions:
        descriptors.append(hd.sr.CodeContentItem(name=codes.DCM.TargetRegion, value=CHEST, relationship_type=acq))
    descriptors += [
        hd.sr.NumContentItem(name=codes.DCM.PixelDataRows, value=int(header.Rows), unit=pixels,
                             relationship_type=acq),
        hd.sr.NumContentItem(name=codes.DCM.PixelDataColumns, value=int(header.Columns),
                             unit=pixels, relationship_type=acq),
    ]
    view = IMAGE_VIEWS.get(str(header.get("ViewPosition", "") or "").strip().upper())
    if view is None and Assumption.FRONTAL in assumptions:
        view = FRONTAL
    if view is not None:
        descriptors.append(hd.sr.CodeContentItem(name=codes.DCM.ImageView, value=view, relationship_type=acq))
    orientation = header.get("PatientOrientation")
    if orientation and len(orientation) == 2 and all(str(v) for v in orientation):
        descriptors += [
            hd.sr.TextContentItem(name=codes.DCM.PatientOrientationRow, value=str(orientation[0]),
                                  relationship_type=acq),
            hd.sr.TextContentItem(name=codes.DCM.PatientOrientationColumn,
                                  value=str(orientation[1]), relationship_type=acq),
        ]
    spacing = header.get("ImagerPixelSpacing") or header.get("PixelSpacing")
    if spacing and len(spacing) == 2:
        descriptors += [
            hd.sr.NumContentItem(name=codes.DCM.HorizontalPixelSpacing, value=float(spacing[1]),
                                 unit=codes.UCUM.Millimeter, relationship_type=acq),
            hd.sr.NumContentItem(name=codes.DCM.VerticalPixelSpacing, value=float(spacing[0]),
                                 unit=codes.UCUM.Millimeter, relationship_type=acq),
        ]
    descriptors += [hd.sr.TextContentItem(name=codes.DCM.Comment, value=str(a), relationship_type=acq)
                    for a in assumptions]
    image = hd.sr.ImageContentItem(
        name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
        referenced_sop_class_uid=header.SOPClassUID,
        referenced_sop_instance_uid=header.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    image.ContentSequence = hd.sr.ContentSequence(descriptors)
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = hd.sr.ContentSequence([image])
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _finding_group(
    number: int,
    det: Detection,
    header: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    model: ModelInfo,
    ohif: bool,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One finding as a TID 1410 Planar ROI Measurements and Qualitative Evaluations group."""
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(det.box),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=header.SOPClassUID,
            referenced_sop_instance_uid=header.SOPInstanceUID,
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=fresh_uid(), identifier=tracking_identifier(model, det.label, number, ohif=ohif)
        ),
        referenced_region=region,
        geometric_purpose=BOUNDED_BY,
        finding_category=MORPHOLOGICALLY_ABNORMAL,
        finding_type=OPACITY,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=LUNG, laterality=laterality(det, header))],
        measurements=[
            hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=float(det.score), unit=PROBABILITY)
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=OPACITY, value=PRESENT)],
    )


def _image_group(
    header: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    model: ModelInfo,
    ohif: bool,
    present: bool,
    probability: float | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The image-level answer as a TID 1501 group on the whole image: "Abnormal opacity: Present"
    or "Absent", with the image's opacity probability (TID 1419 Certainty of Finding) when known."""
    label = model.classes[0] if model.classes else "opacity"
    identifier = tracking_identifier(model, label, "image" if present else None, ohif=ohif)
    measurements = []
    if probability is not None:
        measurements.append(hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=float(probability), unit=PROBABILITY))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=fresh_uid(), identifier=identifier),
        finding_type=OPACITY,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=LUNG)],
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=OPACITY, value=PRESENT if present else ABSENT)],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=header.SOPClassUID,
                referenced_sop_instance_uid=header.SOPInstanceUID,
            )
        ],
    )


@no_patient_data_in_logs
def build_sr(
    source: Dataset,
    detections: Sequence[Detection],
    model: ModelInfo,
    node: NodeIdentity,
    *,
    series_number: int = DEFAULT_SERIES_NUMBERS["sr"],
    instance_number: int = 1,
    ohif: bool = False,
    opacity_probability: float | None = None,
    assumptions: Sequence[Assumption] = (),
) -> hd.sr.Comprehensive3DSR:
    """Comprehensive 3D SR (PS3.3 A.35.13) holding a PS3.16 TID 1500 Measurement Report of the
    detections on ``source``, in the source's study and the node's SR series for it.

    ``ohif=True`` writes tracking identifiers in the form OHIF's SR viewport lists by algorithm
    (see :func:`tracking_identifier`); the structure OHIF needs (Image Library, a tracking UID in
    every group) is always written. ``opacity_probability`` (0..1) is the model's image-level
    answer; with it the image-level group is written whether or not there are findings.
    ``assumptions`` are what routing took for granted because the source's header left it empty
    (chest, frontal view): coded and stated in the Image Library entry (:func:`_image_library`).
    """
    if opacity_probability is not None and not 0.0 <= float(opacity_probability) <= 1.0:
        raise ValueError(f"opacity_probability must lie in [0, 1], got {opacity_probability}")
    check_inputs(source, detections, model, node)
    check_series_number(series_number)
    assumed = check_assumptions(source, assumptions)
    header = source_header(source)

    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=algorithm_parameters(model),
        manufacturer=node.manufacturer,
    )
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [
        _finding_group(number, det, header, algorithm, model, ohif)
        for number, det in enumerate(detections, start=1)
    ]
    if not groups or opacity_probability is not None:
        groups.append(_image_group(header, algorithm, model, ohif, bool(groups), opacity_probability))

    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(node),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=groups,
    )
    # TID 1500 row order: ..., Procedure Reported, Image Library, Imaging Measurements
    root_items = report[0].ContentSequence
    root_items.insert(len(root_items) - 1, _image_library(header, assumed))

    # SR Document Series, SR Document General, SOP Common (highdicom), from the checked header
    sr = hd.sr.Comprehensive3DSR(
        evidence=[header],
        content=report,
        series_instance_uid=series_uid(source, node, "sr"),
        series_number=series_number,
        sop_instance_uid=fresh_uid(),
        instance_number=instance_number,
        manufacturer=node.manufacturer,
        is_complete=True,
        is_final=False,  # PRELIMINARY: no person has verified the algorithm's findings
        institution_name=node.institution_name,
        institutional_department_name=node.institutional_department_name,
        series_description=SERIES_DESCRIPTIONS["sr"],
        contributing_equipment=[algorithm_equipment(model)],
        coding_schemes=[ihe_coding_scheme()],
    )

    # Patient, General Study, Patient Study
    copy_patient_study(sr, header)

    # General Equipment
    general_equipment(sr, node)
    return sr
