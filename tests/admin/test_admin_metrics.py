"""/metrics in Prometheus text format, parsed by prometheus-client's own parser."""

from __future__ import annotations

from typing import Any

from admin_support import FedNode
from prometheus_client.parser import text_string_to_metric_families


def _families(fed_node: FedNode) -> dict[str, Any]:
    rsp = fed_node.get("/metrics")
    assert rsp.status_code == 200 and rsp.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(rsp.text)}


def _value(family: Any, suffix: str = "", **labels: str) -> float:
    for s in family.samples:
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {family.name}{suffix} {labels}")


def test_metrics_parse_and_agree_with_the_store(fed_node: FedNode) -> None:
    status = fed_node.settled()
    fams = _families(fed_node)
    assert _value(fams["dicom_node_instances_received"], "_total") == status["instances"]
    assert _value(fams["dicom_node_received_bytes"], "_total") == status["bytes"]
    assert _value(fams["dicom_node_associations"], "_total", outcome="accepted") >= 2  # RSNA + the simulator
    assert _value(fams["dicom_node_associations"], "_total", outcome="rejected") >= 0
    for state, n in status["jobs_by_kind"]["analyse"].items():
        assert _value(fams["dicom_node_jobs"], kind="analyse", state=state) == n
    assert _value(fams["dicom_node_jobs"], kind="analyse", state="queued") == 0  # queue depth


def test_latency_histograms_model_and_device_health(fed_node: FedNode) -> None:
    fed_node.settled()
    fams = _families(fed_node)
    for name in ("dicom_node_analysis_seconds", "dicom_node_inference_seconds"):
        hist = fams[name]
        assert hist.type == "histogram"
        assert _value(hist, "_count") == 9
        assert _value(hist, "_bucket", le="+Inf") == 9
        assert _value(hist, "_sum") > 0
        buckets = [s.value for s in hist.samples if s.name == name + "_bucket"]
        assert buckets == sorted(buckets)  # cumulative
    model = [s for s in fams["dicom_node_model_info"].samples]
    assert len(model) == 1 and model[0].labels["version"] and model[0].value == 1
    devices = fed_node.json("/api/devices")
    health = {s.labels["status"]: s.value for s in fams["dicom_node_devices"].samples}
    assert sum(health.values()) == len(devices)
    for status in ("OK", "WARN", "ALERT"):
        assert health[status] == sum(d["health"]["status"] == status for d in devices)
    assert "process_resident_memory_bytes" in fams
