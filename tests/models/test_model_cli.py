"""The `dicom-node model` commands as a script sees them: one JSON object on stdout, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from siim_support import make_siim

REPO = Path(__file__).resolve().parents[2]
METRICS = ("AP", "AP50", "AP75", "AP@0.2", "AP@0.4", "AP@0.5", "AP@0.7")


def _model(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # `dicom-node model ...` through the root command's own entry function.
    cmd = [sys.executable, "-c", "from dicom_node.cli import main; main()", "model", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_eval_phantoms_json_contract(phantom_weights):
    done = _model("eval", "--weights", str(phantom_weights), "--phantoms", "12", "--seed", "9001", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # exactly one JSON object, nothing else on stdout
    for key in METRICS:
        assert 0.0 <= result[key] <= 1.0, key
    assert result["images"] == 12 and result["boxes"] > 0
    assert {"sensitivity@0.5FP", "sensitivity@1FP", "sensitivity@2FP"} <= set(result)
    # A phantom-trained model is useful on unseen phantoms (the shipped model is trained on real films).
    assert result["AP50"] >= 0.7
    assert result["AP@0.2"] >= result["AP@0.5"] >= result["AP@0.7"]


def test_eval_rsna_json_contract(rsna_dir):
    done = _model("eval", "--rsna-csv", str(rsna_dir / "labels.csv"), "--images", str(rsna_dir / "images"), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for key in METRICS:
        assert 0.0 <= result[key] <= 1.0, key
    assert result["images"] == 9 and result["boxes"] == 6


def test_eval_siim_json_contract_and_one_line_errors(tmp_path):
    box = [(400.0, 500.0, 700.0, 900.0)]
    images = [(f"im{k}", f"st{k}", 2400, 2000, box if k % 2 else []) for k in range(6)]
    root = make_siim(tmp_path / "siim", images)
    done = _model("eval", "--siim", str(root), "--json")  # no --weights: the shipped model
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for key in (*METRICS, "image_auroc"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["images"] == 6 and result["boxes"] == 3 and result["data"] == f"siim {root}"
    assert 0.0 < result["score_threshold"] < 1.0
    (root / "image_sizes.csv").write_text("image_id,width,height\nim0,2400,2000\n")
    bad = _model("eval", "--siim", str(root), "--json")
    assert bad.returncode == 1 and bad.stdout == ""
    expected = "error: image im1: listed in train_image_level.csv but not in image_sizes.csv or train/"
    assert bad.stderr.strip().splitlines()[-1] == expected  # the one line of ours (torch may warn before it)
    wrong = _model("eval", "--phantoms", "2", "--split", "val", "--json")
    assert wrong.returncode == 2 and "--split val needs --siim DIR" in wrong.stderr


def test_shipped_model_finds_real_opacities_on_its_own_validation_studies(siim_dir):
    # The studies the shipped model never trained on (its checkpoint names the split): the target.
    done = _model("eval", "--siim", str(siim_dir), "--split", "val", "--json", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["images"] > 900 and "validation studies" in result["data"]
    assert result["AP50"] >= 0.30, result
    assert result["image_auroc"] >= 0.70, result


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
