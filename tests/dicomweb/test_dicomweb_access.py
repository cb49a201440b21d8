"""Who may call the DICOMweb listener, against real nodes: the client address, the bearer token, the
Host name without a token, HTTPS with client certificates, and a full disk (503). Each refusal is one
line with its status, stores nothing, and the node goes on serving those who are allowed.
"""

from __future__ import annotations

import ssl

import httpx
import pytest
from dicomweb_support import held, part10, related, serving, stored, stow
from reliability_support import SEED, radiograph
from test_tls import PKI, pki  # noqa: F401  (the fixture: a CA, server, client and stranger certificates)

from dicom_node.testing import NodeProcess

TOKEN = "s3cret-dicomweb-token-0123"


def _line(rsp: httpx.Response, status: int, words: str) -> None:
    assert rsp.status_code == status and rsp.text.count("\n") == 1 and words in rsp.text, rsp.text


def _xr(index: int) -> bytes:
    return part10(radiograph(SEED, 9500 + index, modality="CR"))


def test_token(node_factory: type[NodeProcess]) -> None:
    node = node_factory(worker={"threads": 0}, dicomweb={"enabled": True, "token": TOKEN}).start()
    _line(stow(node, [_xr(1)]), 401, "needs its token")
    rsp = stow(node, [_xr(1)], headers={"Authorization": "Bearer wrong-token-but-long-enough"})
    _line(rsp, 401, "needs its token")
    assert rsp.headers["www-authenticate"].startswith("Bearer")
    _line(httpx.get(node.dicomweb_url + "/studies"), 401, "needs its token")
    assert held(node) == (set(), [])
    rsp = stow(node, [_xr(1)], headers={"Authorization": f"Bearer {TOKEN}"})
    assert rsp.status_code == 200 and len(stored(rsp)) == 1, rsp.text
    assert TOKEN not in node.log_text()


def test_address_and_host_name(node_factory: type[NodeProcess]) -> None:
    node = node_factory(worker={"threads": 0}, dicomweb={"enabled": True, "allowed_hosts": ["10.20.0.0/16"]}).start()
    _line(stow(node, [_xr(2)]), 403, "127.0.0.1 is not in dicomweb.allowed_hosts")
    assert held(node) == (set(), [])
    open_node = node_factory("open", worker={"threads": 0}, dicomweb={"enabled": True}).start()
    # without a token, a DNS name (which a web page could rebind to 127.0.0.1) is refused
    _line(httpx.get(open_node.dicomweb_url + "/studies", headers={"Host": "pacs.example.org"}), 403,
          "IP address or localhost")
    assert httpx.get(open_node.dicomweb_url + "/studies", headers={"Host": "localhost"}).status_code == 200
    assert serving(open_node)


def test_full_disk_is_503(node_factory: type[NodeProcess]) -> None:
    node = node_factory(worker={"threads": 0}, storage={"min_free_mb": 1 << 40}, dicomweb={"enabled": True}).start()
    rsp = stow(node, [_xr(3)])
    _line(rsp, 503, "storage.min_free_mb")
    assert rsp.headers["retry-after"]
    assert held(node) == (set(), []) and serving(node)


def test_https_with_client_certificates(node_factory: type[NodeProcess], pki: PKI) -> None:  # noqa: F811
    node = node_factory(worker={"threads": 0}, dicomweb={"enabled": True, "tls": {
        "certificate": str(pki.server_cert), "key": str(pki.server_key), "ca": str(pki.ca)}}).start()
    assert node.dicomweb_url.startswith("https://")

    def client(cert: tuple[str, str] | None) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        if cert:
            ctx.load_cert_chain(*cert)
        return httpx.Client(verify=ctx, timeout=30)

    with client((str(pki.client_cert), str(pki.client_key))) as ok:
        content, ct = related([_xr(4)])
        rsp = ok.post(node.dicomweb_url + "/studies", content=content, headers={"Content-Type": ct})
        assert rsp.status_code == 200 and len(stored(rsp)) == 1, rsp.text
    for what, cert in {"no client certificate": None,
                       "a certificate of another CA": (str(pki.stranger_cert), str(pki.stranger_key))}.items():
        with client(cert) as other, pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            other.get(node.dicomweb_url + "/studies").raise_for_status()
            pytest.fail(f"{what}: answered")
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the HTTPS port
        httpx.get(node.dicomweb_url.replace("https://", "http://") + "/studies", timeout=10).raise_for_status()
    assert len(held(node)[0]) == 1
