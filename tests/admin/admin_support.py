"""Helpers for the admin tests: headless Chromium, a small DOM reader, polling, artifacts."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import httpx

from dicom_node.testing import REPO, NodeProcess, wait_for

ARTIFACTS = REPO / "test-artifacts" / "admin"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]

T = TypeVar("T")


def chromium(url: str, *, screenshot: Path | None = None, size: tuple[int, int] = (1280, 1600),
             timeout_s: float = 90.0) -> str:
    """Load ``url`` in headless Chromium; return the DOM it built (or save a screenshot and return "")."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            cmd += [f"--screenshot={screenshot}", f"--window-size={size[0]},{size[1]}", url]
        else:
            cmd += ["--dump-dom", url]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if res.returncode != 0:
        raise RuntimeError(f"chromium exited {res.returncode}: {res.stderr[-2000:]}")
    return "" if screenshot is not None else res.stdout


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def descendants(self) -> list[Element]:
        out: list[Element] = []
        for child in self.children:
            out += [child, *child.descendants()]
        return out

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Elements under this one, as :meth:`Dom.find`."""
        return [el for el in self.descendants() if _matches(el, tag, attrs)]


def _matches(el: Element, tag: str | None, attrs: dict[str, str]) -> bool:
    """Tag (any when None) and attributes (``class_``: one of the element's classes) match."""
    if tag is not None and el.tag != tag:
        return False
    for key, want in attrs.items():
        name = key.rstrip("_").replace("_", "-")
        have = el.attrs.get(name)
        if have is None or (want not in have.split() if name == "class" else have != want):
            return False
    return True


class Dom(HTMLParser):
    """Every element of a page with its attributes and text, in document order."""

    VOID = {"meta", "link", "img", "br", "hr", "input", "source", "area", "base", "col", "embed", "wbr"}

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(el)
        if self._open:
            self._open[-1].children.append(el)
        if tag not in self.VOID:
            self._open.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                break

    def handle_data(self, data: str) -> None:
        for el in self._open:
            el.text += data

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Elements with this tag (any when None) whose attributes include ``attrs`` (``class_`` for
        class: one of the element's classes)."""
        return [el for el in self.elements if _matches(el, tag, attrs)]

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]


@dataclass
class FedNode:
    """The running node, its admin URL and what was sent to it."""

    node: NodeProcess
    url: str
    rsna_studies: list[str]
    fleet: dict[str, Any]

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def json(self, path: str) -> Any:
        rsp = self.get(path)
        assert rsp.status_code == 200, f"{path}: {rsp.status_code} {rsp.text[:300]}"
        return rsp.json()

    @property
    def drifting_serial(self) -> str:
        return str(self.fleet["devices"][1]["serial"])

    def twin_recorded(self) -> list[dict[str, Any]] | None:
        """The twin's devices once every image sent has been recorded, else None."""
        devices = self.json("/api/devices")
        expected = len(self.fleet["devices"]) + 1  # the fleet plus the RSNA sample's (unnamed) device
        total = sum(d["acquisitions"] for d in devices)
        return devices if len(devices) == expected and total == self.fleet["sent"] + 9 else None

    def settled(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Status once every analysis job has ended (needs the shipped model)."""
        instances = self.fleet["sent"] + 9

        def done() -> dict[str, Any] | None:
            st = self.json("/api/status")
            counts = st["jobs_by_kind"].get("analyse", {})
            ended = sum(counts.get(s, 0) for s in ("done", "skipped", "failed"))
            return st if ended >= instances else None

        return wait_for("every analysis job ended", done, timeout_s)
