"""STOW-RS in (PS3.18 §10.5): each part of a Store Instances request through the C-STORE ingest.

A part is a PS3.10 file (preamble, "DICM", File Meta Information, data set). Its File Meta gives
what a C-STORE request and its presentation context give the receiver: SOP Class, SOP Instance and
transfer syntax. The same negotiation rules apply (the chest storage classes of
:data:`dicom_node.scp.CHEST_STORAGE_CLASSES`, the transfer syntaxes an installed decoder reads), then
:meth:`dicom_node.ingest.Ingest.receive` does exactly what it does for a C-STORE: checks, fsync,
link into place, instance row and analysis job committed, before the part is reported stored.

Failure Reasons (PS3.18 Table I.2-2) are the C-STORE statuses: 0xA700 out of resources, 0xA900
data set does not match (its SOP class, the File Meta, or the study of the request's path, checked by
the ingest on the data set it reads anyway), 0xC210
cannot understand (not a PS3.10 file, or not parseable), 0x0122 SOP class not supported, 0xC122
transfer syntax not supported.
"""

from __future__ import annotations

import logging

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from dicom_node.dicomweb.multipart import DICOM, Part
from dicom_node.dicomweb.response import PartResult
from dicom_node.ingest import CANNOT_UNDERSTAND, Ingest
from dicom_node.scp import CHEST_STORAGE_CLASSES, SOP_CLASS_NOT_SUPPORTED, transfer_syntaxes
from dicom_node.spool import is_valid_uid

log = logging.getLogger("dicom_node.dicomweb.stow")

TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122  # PS3.18 Table I.2-2


class StowIn:
    """Stores the parts of STOW-RS requests; thread-safe (one :class:`Ingest` under it)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.syntaxes = frozenset(transfer_syntaxes())

    def store(self, part: Part, index: int, *, study_uid: str | None, peer_host: str | None) -> PartResult:
        """Check and ingest one part (its file is linked into the spool or removed); never raises
        for bad input."""
        sop_class = sop_inst = ""
        try:
            media = part.content_type.split(";")[0].strip().lower()
            if media and media != DICOM:
                return _failed("", "", CANNOT_UNDERSTAND, f"part {index} is {media[:64]}, not {DICOM}")
            try:
                meta = read_file_meta_info(part.path)
            except (InvalidDicomError, OSError, ValueError, KeyError, EOFError) as exc:
                return _failed("", "", CANNOT_UNDERSTAND, f"part {index} is not a DICOM PS3.10 file (preamble"
                                                          f" and File Meta Information: {type(exc).__name__})")
            sop_class = str(meta.get("MediaStorageSOPClassUID", "")).strip()
            sop_inst = str(meta.get("MediaStorageSOPInstanceUID", "")).strip()
            ts = str(meta.get("TransferSyntaxUID", "")).strip()
            if not (is_valid_uid(sop_class) and is_valid_uid(sop_inst) and is_valid_uid(ts)):
                return _failed(sop_class[:64], sop_inst[:64], CANNOT_UNDERSTAND,
                               f"part {index}: File Meta Information lacks a valid SOP Class, SOP Instance"
                               " or Transfer Syntax UID")
            if sop_class not in CHEST_STORAGE_CLASSES:
                return _failed(sop_class, sop_inst, SOP_CLASS_NOT_SUPPORTED, "SOP class is not accepted")
            if ts not in self.syntaxes:
                return _failed(sop_class, sop_inst, TRANSFER_SYNTAX_NOT_SUPPORTED,
                               "transfer syntax is not one this node decodes")
            outcome = self.ingest.receive(part.path, sop_class=sop_class, sop_instance=sop_inst,
                                          transfer_syntax=ts, calling_ae=None, peer_host=peer_host,
                                          study_uid=study_uid)
            return PartResult(sop_class, sop_inst, outcome.status, outcome.reason)
        finally:
            part.path.unlink(missing_ok=True)  # gone already when it was linked into place


def _failed(sop_class: str, sop_inst: str, status: int, reason: str) -> PartResult:
    log.warning("STOW-RS part refused", extra={"sop_instance_uid": sop_inst, "status": f"0x{status:04X}",
                                               "reason": reason})
    return PartResult(sop_class, sop_inst, status, reason)

