"""DICOM TLS (PS3.15 Annex B.1), inbound and outbound, against DCMTK's TLS options.

A CA, a server certificate, a client certificate and a stranger's client certificate (another CA) are
made here with openssl. Inbound: ``node.tls`` with ``ca`` requires client certificates, so DCMTK
storescu with ``+tls client.key client.pem +cf ca.pem`` stores and every other client is refused.
Outbound: a destination with ``tls: true`` (and ``tls_ca`` / ``tls_certificate`` / ``tls_key``) to
DCMTK ``storescp +tls``, which requires a client certificate: the node's echo of it succeeds and the
results of a radiograph arrive in storescp's folder.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from reliability_support import SEED, query, write_radiographs

from dicom_node.config import load_config
from dicom_node.testing import NodeProcess, free_port, require, tool, wait_for, wait_port


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path   # a client certificate signed by a CA the node does not trust
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", f"{name}.key",
             "-out", f"{name}.pem", "-subj", f"/CN=dicom-node test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)


def _leaf(folder: Path, name: str, ca: str, usage: str) -> None:
    (folder / f"{name}.ext").write_text(
        f"subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    require(tool("openssl") is not None, "openssl")
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "ca", "serverAuth")
    _leaf(d, "client", "ca", "clientAuth")
    _leaf(d, "stranger", "other-ca", "clientAuth")
    return PKI(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
               d / "stranger.pem", d / "stranger.key")


def _storescu(port: int, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["storescu", "-v", *tls, "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True, timeout=60)


def test_client_with_certificate_stores_and_others_are_refused(node_factory: type[NodeProcess], dcmtk: None,
                                                                pki: PKI, tmp_path: Path) -> None:
    node = node_factory(node={"tls": {"certificate": str(pki.server_cert), "key": str(pki.server_key),
                                      "ca": str(pki.ca)}}, worker={"threads": 0}).start()
    files = write_radiographs(tmp_path / "xr", 4, SEED)

    ok = _storescu(node.port, files[:1], "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
    assert "Received Store Response (Success)" in ok.stdout + ok.stderr, ok.stdout + ok.stderr

    refused = {
        "TLS without a client certificate": _storescu(node.port, files[1:2], "+tla", "+cf", str(pki.ca)),
        "certificate from an untrusted CA": _storescu(node.port, files[2:3], "+tls", str(pki.stranger_key),
                                                      str(pki.stranger_cert), "+cf", str(pki.ca)),
        "no TLS at all": _storescu(node.port, files[3:4]),
    }
    for what, res in refused.items():
        out = res.stdout + res.stderr
        assert res.returncode != 0, f"{what}: {out}"
        assert "Received Store Response" not in out and "Association Accepted" not in out, f"{what}: {out}"
    assert query(node, "SELECT COUNT(*) FROM instances")[0][0] == 1


@pytest.fixture
def tls_storescp(pki: PKI, tmp_path: Path, dcmtk: None) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp with TLS that requires a client certificate from our CA (its default: -rc)."""
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    log = open(tmp_path / "storescp.log", "wb")
    proc = subprocess.Popen(["storescp", "-v", "+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca),
                             "-od", str(out), "-aet", "TLSPACS", str(port)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_port(port, 30, proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def test_destination_over_tls_gets_echo_and_results(node_factory: type[NodeProcess], pki: PKI, tmp_path: Path,
                                                     tls_storescp: tuple[int, Path]) -> None:
    port, received = tls_storescp
    good = {"name": "tlspacs", "ae_title": "TLSPACS", "host": "127.0.0.1", "port": port, "tls": True,
            "tls_ca": str(pki.ca), "tls_certificate": str(pki.client_cert), "tls_key": str(pki.client_key)}
    # Same peer, but the node does not know the CA that signed its certificate (system CAs only).
    untrusted = {"name": "untrusted", "ae_title": "TLSPACS", "host": "127.0.0.1", "port": port, "tls": True,
                 "kinds": ["sr"]}
    # Same peer, trusted, but without a client certificate: storescp refuses the handshake.
    anonymous = {"name": "anonymous", "ae_title": "TLSPACS", "host": "127.0.0.1", "port": port, "tls": True,
                 "tls_ca": str(pki.ca), "kinds": ["sr"]}
    node = node_factory(destinations=[good, untrusted, anonymous],
                        delivery={"max_attempts": 1}).start()

    def echoed() -> dict[str, dict[str, object]] | None:
        dests = {d["name"]: d for d in node.status()["destinations"]}
        return dests if all(d["last_echo_at"] for d in dests.values()) else None

    dests = wait_for("the node's first echo of its destinations", echoed, 60)
    assert dests["tlspacs"]["last_echo_ok"] == 1, dests["tlspacs"]
    assert dests["untrusted"]["last_echo_ok"] == 0, dests["untrusted"]
    assert dests["anonymous"]["last_echo_ok"] == 0, dests["anonymous"]

    [xr] = write_radiographs(tmp_path / "xr", 1, SEED, start=40)
    sent = subprocess.run(["storescu", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port),
                           str(xr)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr

    def delivered() -> bool:
        rows = dict(query(node, "SELECT destination, COUNT(*) FROM deliveries WHERE state='delivered'"
                                " GROUP BY destination"))
        return rows.get("tlspacs", 0) == 3

    t0 = time.monotonic()
    wait_for("three results delivered over TLS", delivered, 300)
    print(f"\nTLS delivery: 3 results in {time.monotonic() - t0:.1f} s after the C-STORE (detector included)")
    files = [p for p in received.rglob("*") if p.is_file()]
    assert len(files) == 3, files
    # The two destinations the handshake fails for park their SR (delivery.max_attempts: 1).
    wait_for("the deliveries over a failed handshake parked",
             lambda: dict(query(node, "SELECT destination, COUNT(*) FROM deliveries WHERE state='failed'"
                                      " GROUP BY destination")) == {"untrusted": 1, "anonymous": 1}, 60)


@pytest.mark.parametrize("extra, message", [
    ({"tls_ca": "ca.pem"}, "tls_ca, tls_certificate and tls_key need tls: true"),
    ({"tls": True, "tls_key": "client.key"}, "tls_certificate and tls_key go together"),
])
def test_destination_tls_keys_are_checked(tmp_path: Path, extra: dict[str, object], message: str) -> None:
    dest = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104, **extra}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"destinations": [dest]}))
    res = subprocess.run([sys.executable, "-m", "dicom_node.cli", "status", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "destinations.0" in lines[0] and message in lines[0], lines[0]


def test_destination_tls_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "site" / "config.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump({"destinations": [
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104, "tls": True, "tls_ca": "pki/ca.pem",
         "tls_certificate": "pki/node.pem", "tls_key": "pki/node.key"}]}))
    [dest] = load_config(cfg).destinations
    assert dest.tls_ca == cfg.parent / "pki" / "ca.pem"
    assert dest.tls_certificate == cfg.parent / "pki" / "node.pem" and dest.tls_key == cfg.parent / "pki" / "node.key"
