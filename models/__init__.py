"""Detection of lung opacities: configs, weights, preprocessing, detector, phantoms, training, evaluation.

This package knows nothing of networking and never imports ``dicom_node`` or ``twin``.
"""

from pathlib import Path

#: The committed model, trained on real SIIM-FISABIO-RSNA radiographs (research and demonstration,
#: not for clinical use); see weights/MODEL_CARD.md.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "opacity_cascade_r18n_fpn.pth"
