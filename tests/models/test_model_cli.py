"""The `dicom-node model` commands as a script sees them: one JSON object on stdout, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METRICS = ("AP", "AP50", "AP75", "AP@0.2", "AP@0.4", "AP@0.5", "AP@0.7")


def _model(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # `dicom-node model ...` through the root command's own entry function.
    cmd = [sys.executable, "-c", "from dicom_node.cli import main; main()", "model", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_eval_phantoms_json_contract():
    done = _model("eval", "--phantoms", "12", "--seed", "9001", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # exactly one JSON object, nothing else on stdout
    for key in METRICS:
        assert 0.0 <= result[key] <= 1.0, key
    assert result["images"] == 12 and result["boxes"] > 0
    assert {"sensitivity@0.5FP", "sensitivity@1FP", "sensitivity@2FP"} <= set(result)
    # The shipped model is useful on unseen phantoms (the full check uses 200 images; see docs/model.md).
    assert result["AP50"] >= 0.7
    assert result["AP@0.2"] >= result["AP@0.5"] >= result["AP@0.7"]


def test_eval_rsna_json_contract(rsna_dir):
    done = _model("eval", "--rsna-csv", str(rsna_dir / "labels.csv"), "--images", str(rsna_dir / "images"), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for key in METRICS:
        assert 0.0 <= result[key] <= 1.0, key
    assert result["images"] == 9 and result["boxes"] == 6


def test_info_json_names_the_shipped_model():
    done = _model("info", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout)
    assert info["classes"] == ["opacity"] and info["architecture"] == "CascadeROIHeads"
    assert info["device"] == "cpu" and info["device_uid"] and info["version"]


def test_eval_without_data_is_one_line_error():
    done = _model("eval", "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "--phantoms" in done.stderr
