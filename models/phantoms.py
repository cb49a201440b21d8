"""Deterministic synthetic chest radiographs with labelled opacities, written as CR or DX DICOM.

The phantoms feed the tests, the demo model, the twin's modality simulator and the benchmarks: they
look like a processed PA/AP chest film (lungs, heart and mediastinum, spine, ribs, clavicles,
diaphragm, soft tissue, detector noise, exposure variation) and carry 0-3 opacities
(consolidation or ground-glass) whose boxes are known exactly. Everything is drawn from
``numpy.random.default_rng([seed, index])``, so the same ``(seed, index)`` always gives the same
pixels and boxes.

Speed matters (>= 20 images/s at 1024 x 1024 on one core): the smooth anatomy is drawn on a
half-resolution grid with separable coordinates and upsampled once; only detector noise is drawn at
full resolution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
OPACITY_KINDS = ("consolidation", "ground_glass")
FIELD_OF_VIEW_MM = 430.0  # a 43 cm cassette / flat panel
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1452.1"
IMPLEMENTATION_VERSION = "DICOMNODE_010"

__all__ = [
    "CR_IMAGE_STORAGE",
    "DX_PRESENTATION_STORAGE",
    "DeviceProfile",
    "Exposure",
    "Phantom",
    "device_fleet",
    "generate",
    "to_dataset",
    "write_dataset",
    "coco_dict",
]


# ----------------------------------------------------------------------------------------------
# Devices and exposures
# ----------------------------------------------------------------------------------------------


@dataclass
class DeviceProfile:
    """One acquisition device as its headers describe it (PS3.3 C.7.5.1 General Equipment)."""

    manufacturer: str
    model: str
    serial: str
    station: str
    software_versions: str
    modality: str  # "CR" or "DX"
    institution: str
    detector_id: str
    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    target_exposure_index: float = 400.0
    detector_type: str = "SCINTILLATOR"  # DX Detector Type (PS3.3 C.8.11.4); ignored for CR
    department: str = "Radiology"
    base_kvp: float = 120.0

    def __post_init__(self) -> None:
        if self.modality not in ("CR", "DX"):
            raise ValueError(f"DeviceProfile.modality: 'CR' or 'DX' (got {self.modality!r})")
        if not 8 <= self.bits_stored <= 16:
            raise ValueError(f"DeviceProfile.bits_stored: 8 to 16 (got {self.bits_stored})")
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(f"DeviceProfile.photometric: MONOCHROME1 or MONOCHROME2 (got {self.photometric!r})")

    @property
    def sop_class_uid(self) -> str:
        return CR_IMAGE_STORAGE if self.modality == "CR" else DX_PRESENTATION_STORAGE


# (manufacturer, model, software, modality, bits, detector type, serial prefix)
_CATALOGUE: tuple[tuple[str, str, str, str, int, str, str], ...] = (
    ("FUJIFILM Corporation", "FCR CAPSULA XLII", "A08-21", "CR", 10, "STORAGE", "FC"),
    ("Carestream Health", "DirectView CR 975", "5.7.412.3", "CR", 12, "STORAGE", "CR9"),
    ("Agfa", "CR 85-X", "NX 3.0.9200", "CR", 12, "STORAGE", "AG"),
    ("KONICA MINOLTA", "REGIUS MODEL 190", "V2.20", "CR", 12, "STORAGE", "KM"),
    ("Philips Medical Systems", "DigitalDiagnost", "4.3.2", "DX", 14, "SCINTILLATOR", "PH"),
    ("SIEMENS", "Ysio Max", "VF10F", "DX", 12, "SCINTILLATOR", "SI"),
    ("GE Healthcare", "Definium 6000", "dm_Platform_release_DR10.3", "DX", 14, "SCINTILLATOR", "GE"),
    ("Canon Inc.", "CXDI-710C", "2.8.3.1", "DX", 16, "SCINTILLATOR", "CX"),
    ("Carestream Health", "DRX-Evolution", "5.7.507.1", "DX", 16, "SCINTILLATOR", "DRX"),
)
_INSTITUTIONS = ("St. Elsewhere General Hospital", "Riverside Community Clinic", "Northgate Medical Centre")
# Vendors calibrate Exposure Index to different targets (IEC 62494-1 leaves TEI to the site).
_TARGET_EI = (250.0, 300.0, 400.0, 500.0)


def device_fleet(n: int, seed: int) -> list[DeviceProfile]:
    """``n`` plausible CR/DX devices with realistic vendor headers, the same for the same seed."""
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = np.random.default_rng([seed, 7919])
    order = rng.permutation(len(_CATALOGUE))
    fleet: list[DeviceProfile] = []
    for i in range(n):
        make, model, software, modality, bits, dtype, prefix = _CATALOGUE[int(order[i % len(order)])]
        serial = f"{prefix}{int(rng.integers(10_000, 99_999))}"
        room = i + 1
        fleet.append(
            DeviceProfile(
                manufacturer=make,
                model=model,
                serial=serial,
                station=f"XR{room:02d}{modality}"[:16],
                software_versions=software,
                modality=modality,
                institution=_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
                detector_id=f"D{serial}-{int(rng.integers(100, 999))}",
                bits_stored=bits,
                # Many CR readers store MONOCHROME1 (PS3.3 C.7.6.3.1.2): keep some so viewers must invert.
                photometric="MONOCHROME1" if modality == "CR" and rng.random() < 0.35 else "MONOCHROME2",
                target_exposure_index=float(_TARGET_EI[int(rng.integers(len(_TARGET_EI)))]),
                detector_type=dtype,
                base_kvp=float(rng.choice([110.0, 115.0, 120.0, 125.0])),
            )
        )
    return fleet


@dataclass
class Exposure:
    """Technique and detector state for one exposure; None fields are filled plausibly.

    Exposure Index, Target Exposure Index and Deviation Index follow IEC 62494-1 as carried by the
    Exposure Index Macro (PS3.3 C.8.11.4.1 / Table 10-24): DI = 10 log10(EI / TEI).
    """

    kvp: float | None = None
    mas: float | None = None
    exposure_time_ms: float | None = None
    exposure_index: float | None = None
    target_exposure_index: float | None = None
    deviation_index: float | None = None
    detector_temperature: float | None = None
    calibration_date: date | None = None

    def resolved(self, phantom: Phantom, device: DeviceProfile, acquired: datetime) -> Exposure:
        """Every field set: the image's own relative dose drives EI, so headers match the noise."""
        rng = np.random.default_rng([phantom.seed, phantom.index, 104729])
        kvp = self.kvp if self.kvp is not None else device.base_kvp + float(rng.choice([-5.0, 0.0, 0.0, 5.0]))
        time_ms = self.exposure_time_ms if self.exposure_time_ms is not None else float(rng.uniform(4.0, 20.0))
        mas = self.mas if self.mas is not None else round(2.5 * phantom.dose * float(rng.uniform(0.9, 1.1)), 2)
        tei = self.target_exposure_index if self.target_exposure_index is not None else device.target_exposure_index
        ei = self.exposure_index if self.exposure_index is not None else round(tei * phantom.dose, 1)
        di = self.deviation_index if self.deviation_index is not None else deviation_index(ei, tei)
        temp = (
            self.detector_temperature
            if self.detector_temperature is not None
            else round(float(rng.normal(31.0, 1.5)), 1)
        )
        cal = (
            self.calibration_date
            if self.calibration_date is not None
            else acquired.date() - timedelta(days=int(rng.integers(3, 180)))
        )
        return Exposure(kvp, mas, time_ms, ei, tei, di, temp, cal)


def deviation_index(exposure_index: float, target_exposure_index: float) -> float:
    """IEC 62494-1 Deviation Index, rounded to 0.01."""
    if exposure_index <= 0 or target_exposure_index <= 0:
        raise ValueError("exposure and target exposure index must be > 0")
    return round(10.0 * float(np.log10(exposure_index / target_exposure_index)), 2)


# ----------------------------------------------------------------------------------------------
# The phantom image
# ----------------------------------------------------------------------------------------------


@dataclass
class Phantom:
    """One synthetic radiograph: 16-bit full-scale pixels (rows x cols) and its opacity boxes.

    Boxes are ``(x, y, w, h)`` in pixels with (0, 0) the top-left corner of the top-left pixel, the
    COCO convention. ``dose`` is the detector dose relative to the target (1.0 = on target); it sets
    the noise and, in the DICOM, the Exposure Index.
    """

    pixels: np.ndarray
    boxes: list[tuple[float, float, float, float]]
    kinds: list[str]
    seed: int
    index: int
    view: str = "PA"
    dose: float = 1.0
    patient_sex: str = "O"
    patient_age_years: int = 50


def _smoothstep(e0: float | np.ndarray, e1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lowfreq(rng: np.random.Generator, cells: int, n: int) -> np.ndarray:
    """Smooth noise in [-1, 1]-ish on an n x n grid (bilinear upsampling of a coarse field)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((n, n), Image.Resampling.BICUBIC), dtype=np.float32)


@dataclass
class _Anatomy:
    """The drawn patient, in normalised coordinates (u across, v down, both 0..1)."""

    cx: float
    lung_u: tuple[float, float]  # centres of image-left and image-right lungs
    lung_half: tuple[float, float]  # half widths
    lung_top: float
    lung_bottom: tuple[float, float]  # costophrenic level per lung
    dome: tuple[float, float]  # diaphragm dome height per lung (fraction of lung height)
    medial: float  # medial extent factor of each lung
    extra: dict[str, float] = field(default_factory=dict)

    def lung_margin(self, side: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Signed distance-like margin (normalised units) inside lung ``side`` (0 left, 1 right)."""
        a = self.lung_half[side]
        top = self.lung_top
        bottom = self.lung_bottom[side]
        height = bottom - top
        x = (u - self.lung_u[side]) / a
        # lateral is away from the midline: x < 0 for the image-left lung
        lateral = -x if side == 0 else x
        y = (v - top) / height
        # A rounded apex (a circle down to y = 0.3), then walls widening slightly toward the base.
        yc = np.clip(y / 0.3, 0.0, 1.0)
        ys = np.sqrt(np.clip(2.0 * yc - yc * yc, 0.0, None)) * (0.82 + 0.18 * np.clip(y, 0.0, 1.0))
        extent = np.where(lateral >= 0, ys * 1.0, ys * self.medial)
        width_margin = (extent - np.abs(x)) * a
        dome_y = 1.0 - self.dome[side] * np.clip(1.0 - (x + (0.25 if side == 0 else -0.25)) ** 2, 0.0, 1.0)
        bottom_margin = (dome_y - y) * height
        return np.minimum(width_margin, bottom_margin)

    def heart_radius(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Normalised radius of the cardiac ellipse (1.0 on its border)."""
        ex = self.extra
        dx, dy = u - ex["heart_u"], v - ex["heart_v"]
        ca, sa = np.cos(0.45), np.sin(0.45)
        return ((dx * ca + dy * sa) / ex["heart_w"]) ** 2 + ((-dx * sa + dy * ca) / ex["heart_h"]) ** 2


def _draw_anatomy(rng: np.random.Generator, view: str) -> _Anatomy:
    cx = 0.5 + float(rng.uniform(-0.03, 0.03))
    spread = float(rng.uniform(0.19, 0.215))
    half = float(rng.uniform(0.155, 0.185))
    top = float(rng.uniform(0.10, 0.16))
    bottom = float(rng.uniform(0.66, 0.76))
    liver = float(rng.uniform(0.0, 0.04))  # the right hemidiaphragm sits higher
    heart_h = float(rng.uniform(0.10, 0.12))
    anat = _Anatomy(
        cx=cx,
        lung_u=(cx - spread, cx + spread),
        lung_half=(half * float(rng.uniform(0.95, 1.05)), half * float(rng.uniform(0.95, 1.05))),
        lung_top=top,
        lung_bottom=(bottom - liver, bottom),
        dome=(float(rng.uniform(0.12, 0.22)), float(rng.uniform(0.10, 0.2))),
        medial=float(rng.uniform(0.55, 0.7)),
        extra={
            "heart_w": float(rng.uniform(0.13, 0.16)) * (1.12 if view == "AP" else 1.0),
            "heart_h": heart_h,
            "heart_u": cx + float(rng.uniform(0.04, 0.07)),
            "heart_v": bottom - 0.09 - heart_h,
            "body_w": float(rng.uniform(0.43, 0.49)),
            "rib_sp": float(rng.uniform(0.052, 0.062)),
            "rib_c": float(rng.uniform(0.10, 0.16)),
            "gamma": float(rng.uniform(0.85, 1.2)),
        },
    )
    return anat


def _render_density(rng: np.random.Generator, anat: _Anatomy, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation-like density map (bigger = brighter) on an n x n grid, and the lung mask."""
    f32 = np.float32
    g = (np.arange(n, dtype=f32) + 0.5) / n
    u = g[None, :]
    v = g[:, None]
    cx = anat.cx
    ex = anat.extra
    t = np.abs(u - cx)

    # Soft tissue: an elliptic cylinder narrowing to the neck above the shoulders.
    body_w = ex["body_w"] * (0.35 + 0.65 * _smoothstep(0.0, 0.13, v))
    body = np.sqrt(np.clip(1.0 - (t / body_w) ** 2, 0.0, 1.0))
    dens = 1.0 * body

    # Heart (a rotated ellipse to the patient's left, image right) and aortic knob: in projection
    # they hide the lung behind them, so the cardiac silhouette reads as one shape with the mediastinum.
    r = anat.heart_radius(u, v)
    heart = _smoothstep(1.08, 0.9, r) * _smoothstep(anat.lung_bottom[1] + 0.02, anat.lung_bottom[1] - 0.06, v)
    r2 = ((u - (cx + 0.045)) / 0.035) ** 2 + ((v - (anat.lung_top + 0.15)) / 0.03) ** 2
    heart = np.maximum(heart, _smoothstep(1.1, 0.8, r2))

    # Lungs.
    margins = [anat.lung_margin(s, u, v) for s in (0, 1)]
    lung = np.maximum(_smoothstep(-0.004, 0.012, margins[0]), _smoothstep(-0.004, 0.012, margins[1]))
    lung *= 1.0 - 0.9 * heart
    depth = _smoothstep(anat.lung_top - 0.02, anat.lung_top + 0.25, v)
    dens -= lung * (0.55 + 0.2 * depth)
    dens += 0.08 * heart

    # Mediastinum and spine.
    med_w = 0.05 + 0.02 * _smoothstep(0.25, 0.55, v)
    dens += 0.10 * _smoothstep(med_w, med_w - 0.02, t) * _smoothstep(0.05, 0.2, v)
    vert_phase = np.cos((v - 0.05) * (2 * np.pi / 0.048)).astype(f32)
    dens += (0.08 + 0.025 * vert_phase) * _smoothstep(0.032, 0.022, t)

    # Posterior ribs: one periodic pattern in a curved coordinate, spacing growing downward.
    s = v - (1.1 * t * t - 0.12 * t)
    q = (s - (anat.lung_top - 0.045)) / ex["rib_sp"]
    phase = q * (1.0 + 0.035 * q)
    frac = phase - np.floor(phase)
    inside = _smoothstep(-0.2, 0.0, phase) * _smoothstep(10.8, 10.0, phase)
    rib_frac = 0.5
    x = frac * (2.0 / rib_frac) - 1.0
    profile = np.where(frac < rib_frac, 0.55 + 0.45 * x * x, 0.0) * (
        _smoothstep(0.0, 0.06, frac) * _smoothstep(rib_frac, rib_frac - 0.06, frac)
    )
    lateral_fade = _smoothstep(0.025, 0.06, t) * _smoothstep(ex["body_w"] * 0.95, ex["body_w"] * 0.8, t)
    ribs = profile * inside * lateral_fade * (0.4 + 0.6 * lung)
    # Anterior ribs: fainter, sloping down toward the midline.
    s2 = v + 0.45 * t - 0.3 * t * t
    q2 = (s2 - (anat.lung_top + 0.08)) / (ex["rib_sp"] * 1.25)
    frac2 = q2 - np.floor(q2)
    ant = (
        _smoothstep(0.0, 0.1, frac2)
        * _smoothstep(0.35, 0.25, frac2)
        * _smoothstep(-0.2, 0.0, q2)
        * _smoothstep(6.0, 5.0, q2)
        * _smoothstep(0.08, 0.16, t)
        * lung
    )
    dens += ex["rib_c"] * (ribs + 0.35 * ant)

    # Clavicles: thick bone bands from the sternal notch out and up to the shoulders.
    top_rows = int(min(n, np.ceil(0.32 * n)))
    vt = v[:top_rows]
    for side in (-1.0, 1.0):
        p0u, p0v = cx + side * 0.035, anat.lung_top + 0.045
        p1u, p1v = cx + side * 0.3, anat.lung_top - 0.035
        du, dv = p1u - p0u, p1v - p0v
        length2 = du * du + dv * dv
        tt = np.clip(((u - p0u) * du + (vt - p0v) * dv) / length2, 0.0, 1.0)
        bend = 0.02 * np.sin(np.pi * tt)
        dist = np.sqrt((u - (p0u + tt * du)) ** 2 + (vt - (p0v + tt * dv) + bend) ** 2)
        xc = dist / 0.016
        dens[:top_rows] += 0.16 * _smoothstep(1.0, 0.8, xc) * (0.6 + 0.4 * xc * xc)

    # Lung markings: vessels fanning from the hila, as smooth texture strongest centrally.
    hila = np.exp(-(((t - 0.09) / 0.12) ** 2) - ((v - 0.45) / 0.25) ** 2)
    dens += lung * (0.02 + 0.05 * hila) * _lowfreq(rng, 40, n)

    # Breast/pectoral soft tissue over the lower lungs in some patients.
    if rng.random() < 0.5:
        bv = anat.lung_bottom[0] - 0.06
        for lu in anat.lung_u:
            rb = ((u - lu) / 0.17) ** 2 + ((v - bv) / 0.12) ** 2
            dens += 0.05 * _smoothstep(1.0, 0.6, rb)
    return dens.astype(f32), lung.astype(f32)


def _place_opacities(
    rng: np.random.Generator, anat: _Anatomy, count: int
) -> list[tuple[str, list[tuple[float, float, float, float, float]], float]]:
    """Choose opacities as unions of rotated ellipses that lie inside a lung and do not overlap."""
    placed: list[tuple[str, list[tuple[float, float, float, float, float]], float]] = []
    boxes: list[tuple[float, float, float, float]] = []
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for _ in range(count):
        for _attempt in range(40):
            kind = OPACITY_KINDS[int(rng.random() < 0.45)]
            side = int(rng.integers(2))
            size = float(rng.uniform(0.035, 0.11))
            lu = anat.lung_u[side] + float(rng.uniform(-0.6, 0.6)) * anat.lung_half[side]
            lv = anat.lung_top + float(rng.uniform(0.2, 0.85)) * (anat.lung_bottom[side] - anat.lung_top)
            lobes = []
            for k in range(int(rng.integers(1, 4))):
                off = size * 0.6 * k
                ou = lu + float(rng.uniform(-off, off))
                ov = lv + float(rng.uniform(-off, off))
                a = size * float(rng.uniform(0.55, 1.0))
                b = size * float(rng.uniform(0.55, 1.0))
                lobes.append((ou, ov, a, b, float(rng.uniform(0, np.pi))))
            ok = True
            for ou, ov, a, b, th in lobes:
                pu = ou + a * np.cos(ang) * np.cos(th) - b * np.sin(ang) * np.sin(th)
                pv = ov + a * np.cos(ang) * np.sin(th) + b * np.sin(ang) * np.cos(th)
                if np.min(anat.lung_margin(side, pu, pv)) < 0.004 or np.min(anat.heart_radius(pu, pv)) < 1.3:
                    ok = False
                    break
            if not ok:
                continue
            box = _lobes_box(lobes)
            if any(_iou(box, other) > 0.0 for other in boxes):
                continue
            contrast = float(rng.uniform(0.16, 0.30) if kind == "consolidation" else rng.uniform(0.10, 0.16))
            placed.append((kind, lobes, contrast))
            boxes.append(box)
            break
    return placed


def _lobes_box(lobes: list[tuple[float, float, float, float, float]]) -> tuple[float, float, float, float]:
    """Exact bounding box (u0, v0, u1, v1) of a union of rotated ellipses."""
    u0 = v0 = np.inf
    u1 = v1 = -np.inf
    for ou, ov, a, b, th in lobes:
        hx = float(np.hypot(a * np.cos(th), b * np.sin(th)))
        hy = float(np.hypot(a * np.sin(th), b * np.cos(th)))
        u0, v0, u1, v1 = min(u0, ou - hx), min(v0, ov - hy), max(u1, ou + hx), max(v1, ov + hy)
    return (u0, v0, u1, v1)


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw_opacity(
    dens: np.ndarray,
    lung: np.ndarray,
    rng: np.random.Generator,
    kind: str,
    lobes: list[tuple[float, float, float, float, float]],
    contrast: float,
) -> None:
    """Add one opacity to ``dens`` in place, drawing only inside its box (plus a soft margin)."""
    n = dens.shape[0]
    u0, v0, u1, v1 = _lobes_box(lobes)
    pad = 0.02
    c0, c1 = max(0, int((u0 - pad) * n)), min(n, int(np.ceil((u1 + pad) * n)))
    r0, r1 = max(0, int((v0 - pad) * n)), min(n, int(np.ceil((v1 + pad) * n)))
    u = ((np.arange(c0, c1, dtype=np.float32) + 0.5) / n)[None, :]
    v = ((np.arange(r0, r1, dtype=np.float32) + 0.5) / n)[:, None]
    # The edge sits at the ellipse (r = 1, weight 0.5): sharp for consolidation, soft for ground glass.
    edge = 0.12 if kind == "consolidation" else 0.3
    weight = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
    for ou, ov, a, b, th in lobes:
        dx, dy = u - ou, v - ov
        ct, st = np.cos(th), np.sin(th)
        r = np.sqrt(((dx * ct + dy * st) / a) ** 2 + ((-dx * st + dy * ct) / b) ** 2)
        np.maximum(weight, _smoothstep(1.0 + edge, 1.0 - edge, r), out=weight)
    texture = _lowfreq(rng, 6, max(r1 - r0, c1 - c0))[: r1 - r0, : c1 - c0]
    mottling = 0.8 + 0.2 * texture if kind == "consolidation" else 0.85 + 0.15 * texture
    dens[r0:r1, c0:c1] += contrast * weight * mottling * np.maximum(lung[r0:r1, c0:c1], 0.5)


def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling to size x size (pixel centres aligned); an exact 2x is done in numpy."""
    n = img.shape[0]
    if size != 2 * n:
        return np.array(Image.fromarray(img, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    out = np.empty((size, n), dtype=np.float32)
    prev = np.concatenate([img[:1], img[:-1]])
    nxt = np.concatenate([img[1:], img[-1:]])
    out[0::2] = 0.75 * img + 0.25 * prev
    out[1::2] = 0.75 * img + 0.25 * nxt
    full = np.empty((size, size), dtype=np.float32)
    prev = np.concatenate([out[:, :1], out[:, :-1]], axis=1)
    nxt = np.concatenate([out[:, 1:], out[:, -1:]], axis=1)
    full[:, 0::2] = 0.75 * out + 0.25 * prev
    full[:, 1::2] = 0.75 * out + 0.25 * nxt
    return full


_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit white noise, size x size: a random window of a fixed, seeded bank (fast, deterministic)."""
    bank = _NOISE_BANKS.get(size)
    if bank is None:
        bank = np.random.default_rng(20240611).standard_normal((size + 257, size + 257), dtype=np.float32)
        _NOISE_BANKS[size] = bank
    r0, c0 = (int(x) for x in rng.integers(0, 257, size=2))
    window = bank[r0 : r0 + size, c0 : c0 + size]
    return window.T if rng.random() < 0.5 else window


def generate(seed: int, index: int = 0, size: int = 1024, n_opacities: int | None = None) -> Phantom:
    """Draw phantom ``index`` of series ``seed``: same arguments, same pixels and boxes."""
    if size < 64:
        raise ValueError("size must be >= 64 pixels")
    if n_opacities is not None and not 0 <= n_opacities <= 3:
        raise ValueError("n_opacities must be 0..3")
    # Two streams: the patient and detector, and the findings. The same (seed, index) with
    # n_opacities=0 is therefore the same radiograph without its opacities.
    rng = np.random.default_rng([seed, index])
    rng_findings = np.random.default_rng([seed, index, 1])
    view = "AP" if rng.random() < 0.25 else "PA"
    anat = _draw_anatomy(rng, view)
    count = int(rng_findings.choice([0, 1, 1, 2, 2, 3])) if n_opacities is None else n_opacities
    opacities = _place_opacities(rng_findings, anat, count)

    n = max(32, size // 4)
    dens, lung = _render_density(rng, anat, n)
    for kind, lobes, contrast in opacities:
        _draw_opacity(dens, lung, rng_findings, kind, lobes, contrast)

    # Film-like display curve with per-image exposure processing, then upsample to full size.
    gamma = anat.extra["gamma"]
    k = 1.2
    img = ((1.0 - np.exp(-k * np.clip(dens, 0.0, None))) * (0.97 / (1.0 - np.exp(-k * 1.6))) + 0.03) ** gamma
    full = _upsample(_upsample(img.astype(np.float32), 2 * n), size)

    # Detector noise: quantum noise grows as dose falls; plus faint line noise of the readout.
    dose = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    sigma = 0.018 / np.sqrt(dose)
    full += _noise_field(rng, size) * np.float32(sigma)
    full += rng.standard_normal((size, 1), dtype=np.float32) * np.float32(0.002)
    level = float(rng.uniform(0.9, 1.05))
    full *= np.float32(level * 65535.0)
    out = np.clip(full, 0.0, 65535.0, out=full).astype(np.uint16)

    boxes = []
    kinds = []
    for kind, lobes, _c in opacities:
        u0, v0, u1, v1 = _lobes_box(lobes)
        boxes.append((u0 * size, v0 * size, (u1 - u0) * size, (v1 - v0) * size))
        kinds.append(kind)
    sex = "F" if rng.random() < 0.5 else "M"
    return Phantom(
        pixels=out,
        boxes=boxes,
        kinds=kinds,
        seed=seed,
        index=index,
        view=view,
        dose=round(dose, 3),
        patient_sex=sex,
        patient_age_years=int(rng.integers(18, 90)),
    )


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------


def _ds_str(value: float, digits: int = 6) -> str:
    """A Decimal String value (PS3.5 6.2, DS: at most 16 characters)."""
    text = f"{value:.{digits}g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def to_dataset(
    phantom: Phantom,
    device: DeviceProfile,
    *,
    acquired_at: datetime | None = None,
    exposure: Exposure | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
) -> Dataset:
    """The phantom as a CR Image (PS3.3 A.2) or DX Image For Presentation (A.26) instance.

    The returned dataset has its file meta (PS3.10 7.1), Explicit VR Little Endian, and fresh
    Series/SOP Instance UIDs on every call, so it is ready for ``dcmwrite`` or C-STORE.
    ``phantom.pixels`` are 16-bit full scale; the instance stores their top ``device.bits_stored``
    bits (inverted when the device writes MONOCHROME1).
    """
    acquired = acquired_at or datetime.now().replace(microsecond=0)
    exp = (exposure or Exposure()).resolved(phantom, device, acquired)
    is_dx = device.modality == "DX"
    rows, cols = phantom.pixels.shape
    shift = 16 - device.bits_stored
    stored = (phantom.pixels >> shift).astype(np.uint16)
    max_value = (1 << device.bits_stored) - 1
    if device.photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(np.uint16)
    sop_uid = generate_uid()
    sop_class = device.sop_class_uid
    dt = acquired.strftime("%Y%m%d")
    tm = acquired.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds = Dataset()
    ds.file_meta = meta

    # SOP Common (C.12.1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = dt
    ds.InstanceCreationTime = tm

    # Patient (C.7.1.1)
    pid = patient_id or f"PH{phantom.seed}-{phantom.index}"
    ds.PatientName = f"PHANTOM^{pid}"
    ds.PatientID = pid
    birth_year = max(1900, acquired.year - phantom.patient_age_years)
    ds.PatientBirthDate = f"{birth_year:04d}0101"
    ds.PatientSex = phantom.patient_sex
    ds.PatientAge = f"{min(phantom.patient_age_years, 999):03d}Y"

    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = dt
    ds.StudyTime = tm
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"S{phantom.index % 10**9}"
    ds.AccessionNumber = f"A{phantom.seed % 10**6:06d}{phantom.index % 10**8:08d}"[:16]
    ds.StudyDescription = "XR CHEST"

    # General Series (C.7.3.1), CR Series (C.8.1.1) / DX Series (C.8.11.1)
    ds.Modality = device.modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate = dt
    ds.SeriesTime = tm
    ds.SeriesDescription = f"CHEST {phantom.view}"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = phantom.view
    if is_dx:
        ds.PresentationIntentType = "FOR PRESENTATION"

    # General Equipment (C.7.5.1)
    ds.Manufacturer = device.manufacturer
    ds.InstitutionName = device.institution
    ds.InstitutionalDepartmentName = device.department
    ds.StationName = device.station
    ds.ManufacturerModelName = device.model
    ds.DeviceSerialNumber = device.serial
    ds.SoftwareVersions = device.software_versions
    ds.DateOfLastCalibration = exp.calibration_date.strftime("%Y%m%d") if exp.calibration_date else ""

    # General Acquisition (C.7.10.1) and General Image (C.7.6.1)
    ds.AcquisitionDate = dt
    ds.AcquisitionTime = tm
    ds.ContentDate = dt
    ds.ContentTime = tm
    ds.InstanceNumber = phantom.index + 1
    ds.PatientOrientation = ["L", "F"]  # PS3.3 C.7.6.1.1.1: rows toward patient left, columns toward feet
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if is_dx else ["ORIGINAL", "PRIMARY", ""]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    # Image Pixel (C.7.6.3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = device.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = device.bits_stored
    ds.HighBit = device.bits_stored - 1
    ds.PixelRepresentation = 0

    spacing = _ds_str(FIELD_OF_VIEW_MM / max(rows, cols))
    if is_dx:
        # DX Anatomy Imaged (C.8.11.2): the chest is an unpaired part.
        ds.ImageLaterality = "U"
        ds.AnatomicRegionSequence = [_code("43799004", "SCT", "Chest")]
        # DX Image (C.8.11.3)
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if device.photometric == "MONOCHROME2" else -1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "IDENTITY" if device.photometric == "MONOCHROME2" else "INVERSE"
        # DX Detector (C.8.11.4)
        ds.DetectorType = device.detector_type
        ds.DetectorConfiguration = "AREA"
        ds.DetectorID = device.detector_id
        ds.DetectorManufacturerName = device.manufacturer
        ds.DetectorManufacturerModelName = device.model
        ds.DateOfLastDetectorCalibration = exp.calibration_date.strftime("%Y%m%d") if exp.calibration_date else ""
        ds.DetectorTemperature = _ds_str(exp.detector_temperature or 0.0)
        ds.ImagerPixelSpacing = [spacing, spacing]
        # DX Positioning (C.8.11.5)
        ds.PositionerType = "COLUMN"
        ds.PatientOrientationCodeSequence = [_code("10904000", "SCT", "Standing")]
        ds.ViewCodeSequence = [
            _code("399348003", "SCT", "postero-anterior")
            if phantom.view == "PA"
            else _code("272479006", "SCT", "antero-posterior")
        ]
        # Acquisition Context (C.7.6.14)
        ds.AcquisitionContextSequence = []
    else:
        # CR Image (C.8.1.2)
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.PlateID = device.detector_id
        ds.PlateType = "IP"
    # Exposure parameters (CR Image C.8.1.2; X-Ray Acquisition Dose C.8.7.8 for DX)
    ds.KVP = _ds_str(exp.kvp or 0.0)
    ds.DistanceSourceToDetector = "1800"
    ds.ExposureTime = int(round(exp.exposure_time_ms or 0.0))
    ds.XRayTubeCurrent = int(round((exp.mas or 0.0) / max(exp.exposure_time_ms or 1.0, 1e-3) * 1000.0))
    ds.Exposure = int(round(exp.mas or 0.0))
    ds.ExposureInuAs = int(round((exp.mas or 0.0) * 1000.0))
    # Exposure Index Macro (Table 10-24)
    ds.ExposureIndex = _ds_str(exp.exposure_index or 0.0)
    ds.TargetExposureIndex = _ds_str(exp.target_exposure_index or 0.0)
    ds.DeviationIndex = _ds_str(exp.deviation_index or 0.0)
    if not is_dx:
        # Not in the CR IOD, but every CR reader's service log keeps them: private-free standard tags.
        ds.DetectorID = device.detector_id
        ds.DateOfLastDetectorCalibration = exp.calibration_date.strftime("%Y%m%d") if exp.calibration_date else ""
        ds.DetectorTemperature = _ds_str(exp.detector_temperature or 0.0)

    # VOI LUT (C.11.2): the window a viewer should open with, over the stored range.
    center, width = _default_window(stored, max_value)
    ds.WindowCenter = _ds_str(center)
    ds.WindowWidth = _ds_str(width)
    ds.WindowCenterWidthExplanation = "PHANTOM"

    ds.PixelData = stored.tobytes()
    return ds


def _default_window(stored: np.ndarray, max_value: int) -> tuple[float, float]:
    """A window over the 1st-99th percentile of a coarse sample, as a reader's auto-window would."""
    sample = stored[::8, ::8]
    lo, hi = np.percentile(sample, [1.0, 99.0])
    width = max(float(hi - lo), 2.0)
    return round(float(lo + hi) / 2.0, 1), round(width, 1)


def coco_dict(phantoms: list[Phantom], file_names: list[str]) -> dict:
    """COCO detection labels (one category, ``opacity``) for phantoms saved under ``file_names``."""
    images = []
    annotations = []
    ann_id = 1
    for image_id, (ph, name) in enumerate(zip(phantoms, file_names, strict=True), start=1):
        rows, cols = ph.pixels.shape
        images.append({"id": image_id, "file_name": name, "width": int(cols), "height": int(rows)})
        for box, kind in zip(ph.boxes, ph.kinds, strict=True):
            x, y, w, h = (round(float(c), 3) for c in box)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": round(w * h, 3),
                    "iscrowd": 0,
                    "attributes": {"kind": kind},
                }
            )
            ann_id += 1
    return {
        "info": {"description": "dicom-node synthetic chest phantoms (not for clinical use)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "opacity", "supercategory": "finding"}],
    }


def write_dataset(out_dir: Path, n: int, seed: int, size: int = 1024, device: DeviceProfile | None = None) -> Path:
    """Write ``n`` phantoms as DICOM files and their labels as ``coco.json``; return the JSON path.

    Without ``device`` the images rotate through a small fleet (``device_fleet(3, seed)``), so a
    folder holds both CR and DX like a real intake would.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fleet = [device] if device is not None else device_fleet(3, seed)
    phantoms: list[Phantom] = []
    names: list[str] = []
    for i in range(n):
        ph = generate(seed, i, size=size)
        dev = fleet[i % len(fleet)]
        ds = to_dataset(ph, dev)  # one patient, one study per phantom
        name = f"phantom_{seed}_{i:05d}.dcm"
        pydicom.dcmwrite(out_dir / name, ds, enforce_file_format=True)
        phantoms.append(ph)
        names.append(name)
    path = out_dir / "coco.json"
    path.write_text(json.dumps(coco_dict(phantoms, names), indent=1))
    return path
