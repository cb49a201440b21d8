"""Real processes for tests, benchmarks and the demo: the node, DCMTK tools, Orthanc, PostgreSQL, HAProxy.

Nothing here mocks the network: each helper starts a real program on a loopback port of its own
and stops it by PID. Used by ``tests/`` and ``scripts/``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parent.parent


def _shared_data(name: str, env: str, marker: str) -> Path:
    """A real data set of shared/: $ENV, else shared/data/NAME inside or beside the checkout."""
    given = os.environ.get(env)
    candidates = [Path(given)] if given else []
    candidates += [REPO / "shared" / "data" / name, REPO.parent / "shared" / "data" / name]
    return next((c for c in candidates if (c / marker).is_file()), candidates[-1])


#: The real RSNA sample (9 CRs with boxes): $RSNA_SAMPLE_DIR, else shared/data/rsna-cxr-sample.
RSNA_DIR = _shared_data("rsna-cxr-sample", "RSNA_SAMPLE_DIR", "labels.csv")
#: The SIIM-FISABIO-RSNA radiographs the shipped model was trained on: $SIIM_DIR, else shared/.
SIIM_DIR = _shared_data("siim-covid-256", "SIIM_DIR", "train_image_level.csv")


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    """Fail in CI, skip elsewhere: a missing peer must never pass silently in CI."""
    import pytest

    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing (make setup installs it)")
    pytest.skip(f"{what} is missing (make setup installs it)")


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (two days, RSA 2048) and its key, made by
    openssl in ``folder``: (cert.pem, key.pem), for the TLS tests."""
    folder.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
                          "key.pem", "-out", "cert.pem", "-subj", "/CN=localhost",
                          "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                         cwd=folder, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl req failed: {res.stderr.strip()[-300:]}")
    return folder / "cert.pem", folder / "key.pem"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float = 120.0, every_s: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not after {timeout_s:.0f} s (last: {last!r})")


def wait_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def tool(name: str) -> str | None:
    return shutil.which(name)


def missing_dcmtk(*names: str) -> str | None:
    """The one-line error a benchmark prints when one of DCMTK's ``names`` is not installed."""
    gone = [n for n in names if tool(n) is None]
    return f"error: {', '.join(gone)} (DCMTK) missing: make setup installs it" if gone else None


def rsna_files() -> list[Path]:
    return sorted((RSNA_DIR / "images").glob("*.dcm"))


@dataclass
class NodeProcess:
    """A ``dicom-node serve`` process with its own config, storage folder and ports."""

    root: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    config_path: Path = Path()
    dicomweb_port: int = 0  # on loopback; serving only with the override dicomweb={"enabled": True}
    database: str | None = None  # storage.database: None for the embedded SQLite file, or a postgresql:// URL

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.dicomweb_port = self.dicomweb_port or free_port()
        storage: dict[str, Any] = {"dir": str(self.root / "var"), "min_free_mb": 1}
        if self.database:
            storage["database"] = self.database
        cfg: dict[str, Any] = {
            "node": {"port": self.port, "host": "127.0.0.1"},
            "storage": storage,
            "admin": {"enabled": False},
            "dicomweb": {"enabled": False, "host": "127.0.0.1", "port": self.dicomweb_port},
            "twin": {"sidecar_dir": str(self.root / "sidecar")},
        }
        for key, value in self.overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        self.dicomweb_port = int(cfg["dicomweb"].get("port", self.dicomweb_port))
        self.database = cfg["storage"].get("database") or None
        self.config_path = self.root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))

    @property
    def storage(self) -> Path:
        return self.root / "var"

    @property
    def log_path(self) -> Path:
        return self.root / "serve.log"

    @property
    def dicomweb_url(self) -> str:
        """The base URL of its DICOMweb service (``dicomweb.enabled``), ``http(s)://127.0.0.1:PORT/dicom-web``."""
        scheme = "https" if (self.overrides.get("dicomweb") or {}).get("tls") else "http"
        return f"{scheme}://127.0.0.1:{self.dicomweb_port}/dicom-web"

    def start(self, wait_s: float = 120.0) -> NodeProcess:
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
        )
        log.close()
        wait_port(self.port, wait_s, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Signal the node and wait for it; returns its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = int(self.proc.returncode)
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cli(self, *args: str, check: bool = True, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``dicom-node ARGS --config <this node's config>``."""
        return subprocess.run(
            [sys.executable, "-m", "dicom_node.cli", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, check=check, timeout=timeout_s,
        )

    @property
    def log_dir(self) -> Path:
        """Where it writes its log files (``logging.dir``: per host name when its store is on PostgreSQL)."""
        from dicom_node.config import load_config

        return load_config(self.config_path).log_dir

    @property
    def engine(self) -> str:
        """``sqlite`` or ``postgresql``: the engine its store is on."""
        return "postgresql" if self.database else "sqlite"

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read of its database (SQLite file or PostgreSQL, ``?`` parameters) while it serves."""
        from dicom_node.store.connections import Connections

        db = Connections(self.database or self.storage / "node.db", readonly=True)
        try:
            return [tuple(row) for row in db.conn().execute(sql, params).fetchall()]
        finally:
            db.close()

    def status(self) -> dict[str, Any]:
        """What ``dicom-node status --json`` prints (the same function, called in-process)."""
        from dicom_node.config import load_config
        from dicom_node.status import node_status

        return node_status(load_config(self.config_path))

    def wait_jobs_settled(self, expected: int, timeout_s: float = 120.0, kind: str = "analyse") -> dict[str, Any]:
        """Wait until ``expected`` jobs of ``kind`` have ended (done, skipped or failed)."""
        deadline = time.monotonic() + timeout_s
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.status()
            counts = st["jobs_by_kind"].get(kind, {})
            if sum(counts.get(s, 0) for s in ("done", "skipped", "failed")) >= expected:
                return st
            time.sleep(0.3)
        raise TimeoutError(f"jobs not settled after {timeout_s} s: {st.get('jobs_by_kind')}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_growth(pid: int, action: Callable[[], object]) -> tuple[float, float]:
    """Run ``action``; returns process ``pid``'s RSS before it and its peak RSS growth during it,
    in MB. Exact, not sampled: the kernel's high-water mark (VmHWM), reset first through
    /proc/PID/clear_refs (Linux)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status_kb(pid, "VmRSS")
    action()
    return before / 1024, (_status_kb(pid, "VmHWM") - before) / 1024


def synthetic_cr(rows: int, columns: int, pixels: bytes, **attrs: Any) -> Any:
    """A 16-bit (12 stored) chest CR of ``rows`` x ``columns`` around ``pixels``, fresh UIDs, explicit
    VR little endian, for the benchmarks and the size tests; ``attrs`` are set on top."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Bench^Synthetic", "BENCH"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py``: the simulator, the fuzzer and the benchmarks are scripts a person
    runs, not a package, and the tests use their code as it is."""
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def storescu(port: int, files: list[Path] | list[str], *, aet: str = "MODALITY1", aec: str = "DICOM_NODE",
             extra: list[str] | None = None, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu, sending files as they are (``-xy``: propose JPEG and everything else)."""
    cmd = ["storescu", "-xy", "-aet", aet, "-aec", aec, *(extra or []), "127.0.0.1", str(port),
           *[str(f) for f in files]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


#: Orthanc's DICOMweb plugin as Debian's ``orthanc-dicomweb`` installs it.
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def missing_orthanc_dicomweb() -> str | None:
    """Why Orthanc with DICOMweb cannot run here (a reason to skip, or to fail in CI), or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc)"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return None


@dataclass
class OrthancProcess:
    """A real Orthanc PACS (Debian package) with temporary storage, on ports of its own.

    ``dicomweb=True`` loads its DICOMweb plugin (Debian ``orthanc-dicomweb``) at ``/dicom-web/``;
    ``dicomweb_servers`` names the DICOMweb servers it may push to (``/dicom-web/servers/NAME/stow``),
    each ``{"Url": ..., "HttpHeaders": {...}}`` as the plugin's ``DicomWeb.Servers`` takes them.
    ``options`` are further Orthanc settings on top (e.g. ``SslEnabled`` with ``SslCertificate``,
    ``AuthenticationEnabled`` with ``RegisteredUsers``, ``MaximumPatientCount``).
    """

    root: Path
    ae_title: str = "ORTHANC"
    dicom_port: int = 0
    http_port: int = 0
    dicomweb: bool = False
    dicomweb_servers: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_s: float = 60.0) -> OrthancProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        cfg = {
            "Name": "dicom-node-test", "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"), "DicomAet": self.ae_title, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "Plugins": [], "StableAge": 1, "UnknownSopClassAccepted": False,
        }
        if self.dicomweb:
            cfg["Plugins"] = [DICOMWEB_PLUGIN]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                               "Servers": self.dicomweb_servers}
        cfg.update(self.options)
        (self.root / "orthanc.json").write_text(json.dumps(cfg))
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.http_port, wait_s, self.proc)
        wait_port(self.dicom_port, wait_s, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str) -> Any:
        """GET Orthanc's REST API and decode the JSON."""
        import urllib.request

        with urllib.request.urlopen(f"{self.http_url}{path}", timeout=30, context=self._ssl()) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def destination(self, name: str = "pacs") -> dict[str, Any]:
        return {"name": name, "ae_title": self.ae_title, "host": "127.0.0.1", "port": self.dicom_port}

    @property
    def dicomweb_url(self) -> str:
        """The base URL of its DICOMweb plugin (``dicomweb=True``), e.g. for a STOW-RS destination."""
        return f"{self.http_url}/dicom-web"

    @property
    def http_url(self) -> str:
        """Its REST API: https with ``SslEnabled`` (a certificate for 127.0.0.1), else http."""
        return f"{'https' if self.options.get('SslEnabled') else 'http'}://127.0.0.1:{self.http_port}"

    def _ssl(self) -> Any:
        """With ``SslEnabled``, trust its own certificate (``SslCertificate``, self-signed); else None."""
        import ssl

        cert = self.options.get("SslCertificate") if self.options.get("SslEnabled") else None
        return ssl.create_default_context(cafile=str(cert)) if cert else None

    def post(self, path: str, body: Any) -> Any:
        """POST JSON to Orthanc's REST API and decode the JSON answer."""
        import urllib.request

        req = urllib.request.Request(f"{self.http_url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=120, context=self._ssl()) as rsp:
            answer = rsp.read()
        return json.loads(answer) if answer[:1] in (b"{", b"[") else answer


def postgres_tool(name: str) -> str | None:
    """A PostgreSQL server program (``initdb``, ``postgres``): on PATH, else in Debian's
    /usr/lib/postgresql/VERSION/bin, which the ``postgresql`` package keeps off PATH (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    return versions[-1] if versions else None


def missing_postgres() -> str | None:
    """Why a PostgreSQL server cannot be started here (a reason to skip, or to fail in CI), or None."""
    gone = [n for n in ("initdb", "postgres") if postgres_tool(n) is None]
    if gone:
        return f"PostgreSQL's {', '.join(gone)} not found (Debian package postgresql)"
    if os.geteuid() == 0 and not (_has_user("postgres") and shutil.which("setpriv")):
        return "running as root, but no postgres system user (or setpriv) to run PostgreSQL as"
    return None


def missing_haproxy() -> str | None:
    """Why HAProxy cannot run here, or None."""
    return None if _haproxy() else "haproxy not found (Debian package haproxy)"


def _haproxy() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _stop_pid(proc: subprocess.Popen[bytes], first: int, timeout_s: float) -> int:
    """Signal ``proc`` with ``first``, wait; SIGKILL when it outlives ``timeout_s``. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(first)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


@dataclass
class PostgresProcess:
    """A real PostgreSQL server of its own: a fresh cluster (``initdb``) in a temporary folder, on a free
    port of 127.0.0.1 only, password login (scram-sha-256), ``fsync`` and ``synchronous_commit`` on as
    in production. ``root`` keeps its log (``postgres.log``).

    The cluster lives in a folder of the system's temp dir, not under ``root``: as root (CI) the server
    must run as the ``postgres`` system user, which cannot enter pytest's 0700 temp folders, and the
    Unix socket path must stay under 107 bytes. ``stop``/``start`` keep the data; leaving the ``with``
    block (or ``cleanup``) removes it.
    """

    root: Path
    user: str = "dicom_node"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    data_dir: Path = Path()
    settings: dict[str, str] = field(default_factory=dict)  # more ``-c name=value`` server settings
    start_s: float = 0.0  # how long the last start took, initdb included

    @property
    def _as_postgres(self) -> list[str]:
        """Root may not run PostgreSQL: drop to the ``postgres`` system user (exec, no fork: the PID we hold
        is the server's own)."""
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]

    def _initdb(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
        self.data_dir = base / "data"
        (base / "run").mkdir()
        pwfile = base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            for p in (base, base / "run", pwfile):
                shutil.chown(p, "postgres", "postgres")
        initdb = postgres_tool("initdb")
        if initdb is None:
            raise RuntimeError(missing_postgres() or "initdb not found")
        done = subprocess.run(
            [*self._as_postgres, initdb, "-D", str(self.data_dir), "-U", self.user, f"--pwfile={pwfile}",
             "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, cwd=base, timeout=300,
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self, wait_s: float = 120.0) -> PostgresProcess:
        """Make the cluster on first use, start the server and wait until it accepts a login."""
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        if self.data_dir == Path():
            self._initdb()
        self.port = self.port or free_port()
        server = postgres_tool("postgres")
        if server is None:
            raise RuntimeError(missing_postgres() or "postgres not found")
        conf = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                "unix_socket_directories": str(self.data_dir.parent / "run"),
                "fsync": "on", "synchronous_commit": "on", "logging_collector": "off", **self.settings}
        args = [a for k, v in conf.items() for a in ("-c", f"{k}={v}")]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self._as_postgres, server, "-D", str(self.data_dir), *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir.parent,
        )
        log.close()
        wait_for(f"PostgreSQL on 127.0.0.1:{self.port} (log {self.log_path})", self._accepts, wait_s, 0.1)
        self.start_s = time.monotonic() - t0
        return self

    def _accepts(self) -> bool:
        import psycopg

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self, db: str = "postgres") -> str:
        """``postgresql://user:password@127.0.0.1:PORT/db`` (psycopg and SQLAlchemy 2.1 take it as it is)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """A new, empty database ``name`` (so each test can have its own); returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name)))
        return self.url(name)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> int:
        """Stop the server by its PID; returns its exit code. SIGINT by default, PostgreSQL's fast shutdown
        (ends the sessions, checkpoints): its SIGTERM is a smart shutdown that waits for every client to
        leave, which a node's open pool never does. SIGKILL after ``timeout_s``. Waits for its backends too."""
        if self.proc is None:
            return 0
        kids = self._children()
        rc = _stop_pid(self.proc, sig, timeout_s)
        import psutil

        psutil.wait_procs(kids, timeout=timeout_s)
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends notice and exit, and are waited for."""
        self.stop(signal.SIGKILL)

    def _children(self) -> list[Any]:
        import psutil

        try:
            return list(psutil.Process(self.proc.pid).children(recursive=True)) if self.proc else []
        except psutil.NoSuchProcess:
            return []

    def cleanup(self) -> None:
        """Stop the server and remove its cluster."""
        self.stop()
        if self.data_dir != Path():
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)
            self.data_dir = Path()

    def __enter__(self) -> PostgresProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass
class HaproxyProcess:
    """A real HAProxy (Debian package) in the foreground (``-db``) on ``config_text``, written to
    ``root/haproxy.cfg``; its log (``log stdout`` and its warnings) goes to ``root/haproxy.log``.

    ``port`` is the frontend port it is ready on (default: the port of the config's first ``bind``).
    The config is checked with ``haproxy -c`` first so that a bad one fails with HAProxy's own words.
    """

    config_text: str
    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        return self.root / "haproxy.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def stats_socket(self) -> Path | None:
        """The config's ``stats socket`` path, if it has one."""
        m = re.search(r"^\s*stats\s+socket\s+(\S+)", self.config_text, re.M)
        return Path(m.group(1)) if m else None

    def start(self, wait_s: float = 30.0) -> HaproxyProcess:
        exe = _haproxy()
        if exe is None:
            raise RuntimeError(missing_haproxy() or "haproxy not found")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        check = subprocess.run([exe, "-c", "-f", str(self.config_path)], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c rejects {self.config_path}: {check.stdout}{check.stderr}")
        if not self.port:
            m = re.search(r"^\s*bind\s+\S*:(\d+)", self.config_text, re.M)
            if m is None:
                raise ValueError("no bind ADDRESS:PORT in the config: give port")
            self.port = int(m.group(1))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([exe, "-f", str(self.config_path), "-db"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.port, wait_s, self.proc)
        return self

    def command(self, line: str, timeout_s: float = 10.0) -> str:
        """One command on the stats socket (``show stat``, ``show servers state``...); its answer."""
        path = self.stats_socket
        if path is None:
            raise RuntimeError("the config has no stats socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def show_stat(self) -> list[dict[str, str]]:
        """``show stat`` as rows (pxname, svname, status, check_status, scur, stot...)."""
        import csv
        import io

        text = self.command("show stat").lstrip("# ")
        return [dict(r) for r in csv.DictReader(io.StringIO(text)) if r.get("pxname")]

    def server_status(self, backend: str, server: str) -> str:
        """A server's state as HAProxy sees it: UP, DOWN, "UP 1/2" (going down), "DOWN 1/2", MAINT..."""
        for row in self.show_stat():
            if row["pxname"] == backend and row["svname"] == server:
                return row["status"]
        raise KeyError(f"{backend}/{server} not in show stat")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (HAProxy's hard stop), SIGKILL after ``timeout_s``; its exit code."""
        if self.proc is None:
            return 0
        rc = _stop_pid(self.proc, signal.SIGTERM, timeout_s)
        self.proc = None
        return rc

    def __enter__(self) -> HaproxyProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_haproxy_config(frontend_bind: str, servers: list[tuple[str, int]], stats_socket: Path,
                           doc: Path = REPO / "docs" / "cluster.md") -> str:
    """The ``haproxy`` block of docs/cluster.md as it is, its placeholders filled: the tests run the
    sample configuration that the document gives, not one of their own. ``servers`` are (name, port) on
    127.0.0.1, each ``server NAME 127.0.0.1:PORT check``."""
    m = re.search(r"^```haproxy\n(.*?)^```", doc.read_text(), re.M | re.S)
    if m is None:
        raise ValueError(f"no ```haproxy block in {doc}")
    text = m.group(1)
    lines = "\n".join(f"    server {name} 127.0.0.1:{port} check" for name, port in servers)
    for key, value in (("FRONTEND_BIND", frontend_bind), ("STATS_SOCKET", str(stats_socket)), ("SERVER_LINES", lines)):
        if "{{" + key + "}}" not in text:
            raise ValueError(f"docs/cluster.md's haproxy block has no {{{{{key}}}}}")
        text = text.replace("{{" + key + "}}", value)
    return text
