"""dicom-node: a DICOM node for chest radiographs (receive, detect opacities, return results to PACS)."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("dicom-node")
except importlib.metadata.PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "unknown"
