"""Helpers for the reliability tests: synthetic radiographs, raw instance files, what storescu saw,
what the node's database and spool hold, and the peak RSS of a process.

Everything reads the real thing: storescu's own log lines, the node's SQLite file (read-only, beside
the running node, as ``dicom-node status`` does), the files under its spool.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID

from dicom_node.testing import NodeProcess, load_script
from models.phantoms import device_fleet, generate, to_dataset

# Every random choice in this folder derives from it. CI runs the default; RELIABILITY_SEED=N runs
# the same tests on other draws (docs/reliability.md lists the seeds run by hand).
SEED = int(os.environ.get("RELIABILITY_SEED", "20260407"))





def radiograph(seed: int, index: int, *, size: int = 256, modality: str | None = None, **attrs: Any) -> Dataset:
    """A synthetic chest radiograph (CR or DX, fresh UIDs on every call) with ``attrs`` set on top."""
    fleet = [d for d in device_fleet(8, seed) if modality is None or d.modality == modality]
    device = fleet[index % len(fleet)]
    ds = to_dataset(generate(seed, index, size=size), device)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def write_radiographs(folder: Path, n: int, seed: int, *, size: int = 256, start: int = 0,
                      **attrs: Any) -> list[Path]:
    """``n`` radiographs as PS3.10 files named by index; returns the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"xr_{seed}_{i:05d}.dcm"
        pydicom.dcmwrite(path, radiograph(seed, i, size=size, **attrs), enforce_file_format=True)
        paths.append(path)
    return paths


def encode(ds: Dataset, transfer_syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """The data set alone (no File Meta), as a C-STORE carries it in ``transfer_syntax``."""
    ts = UID(transfer_syntax)
    buf = DicomBytesIO()
    buf.is_little_endian = ts.is_little_endian
    buf.is_implicit_VR = ts.is_implicit_VR
    write_dataset(buf, ds)
    return buf.getvalue()


def write_raw(path: Path, sop_class: str, sop_instance: str, transfer_syntax: str, data: bytes) -> Path:
    """A PS3.10 file whose data set is ``data`` byte for byte, however broken.

    With ``pynetdicom._config.STORE_SEND_CHUNKED_DATASET`` on, ``send_c_store(path)`` takes the SOP
    Class / Instance and the transfer syntax from this File Meta and sends ``data`` as it is.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1452.99"
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(b"\x00" * 128 + b"DICM" + buf.getvalue() + data)
    return path


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def query(node: NodeProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the node's database (SQLite in WAL or PostgreSQL: readers never block the node)."""
    return node.rows(sql, args)


def job_states(node: NodeProcess, kind: str) -> dict[str, int]:
    return {state: n for state, n in query(node, "SELECT state, COUNT(*) FROM jobs WHERE kind=? GROUP BY state", kind)}


def spool_files(node: NodeProcess) -> list[Path]:
    """Every file under the spool, temporary ones included."""
    root = node.storage / "spool"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    """``items`` in ``n`` slices of (nearly) equal length, in order."""
    size, extra = divmod(len(items), n)
    start = 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        yield items[start:end]
        start = end


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def all_uids(paths: Iterable[Path]) -> dict[str, Path]:
    return {sop_uid(p): p for p in paths}


_bench_load = load_script("bench_load")
PeakRSS = _bench_load.PeakRSS
storescu_statuses = _bench_load.storescu_statuses
