"""Typed settings for the node, loaded from ``config.yaml``.

One object (:class:`Config`) holds every setting; each package reads only its own section. A bad
file stops start-up with :class:`ConfigError`, whose message is one line naming the key and what is
allowed, so an admin can fix it without reading a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

ENV_VAR = "DICOM_NODE_CONFIG"
DEFAULT_PATH = Path("config.yaml")

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")


class ConfigError(ValueError):
    """A configuration problem, phrased as one line naming the key."""


if TYPE_CHECKING:
    from twin.health import Thresholds

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_ae_title(value: str, *, wildcard: bool = False) -> str:
    """AE titles are 1-16 characters of the default repertoire, no backslash (PS3.5 6.2, VR AE)."""
    if wildcard and value == "*":
        return value
    if not _AE_RE.match(value) or "\\" in value or not value.strip():
        raise ValueError("an AE title of 1 to 16 printable ASCII characters, no backslash")
    return value.strip()


class TLSConfig(_Section):
    """DICOM TLS (PS3.15 Annex B.1); ``ca`` given means client certificates are required."""

    certificate: Path
    key: Path
    ca: Path | None = None


#: what a node can do: take C-STORE and STOW-RS, run the detector, send results, run the cluster-wide
#: schedules (twin intake and health, retention, peer echo), serve the admin console
NODE_ROLES = ("receive", "analyse", "deliver", "schedule", "admin")


class NodeConfig(_Section):
    ae_title: str = "DICOM_NODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(16, ge=1, le=1024)
    max_pdu_size: int = Field(1_048_576, ge=0)
    network_timeout_s: float = Field(60.0, gt=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    # Connections accepted and not yet established (dicom_node.guard): per source address, more are
    # closed at once; in all, the oldest is closed to make room. Each costs two threads.
    max_pending_connections: int = Field(64, ge=1, le=4096)
    max_pending_per_host: int = Field(8, ge=1, le=4096)
    tls: TLSConfig | None = None
    # Load balancers (HAProxy send-proxy-v2) whose connections start with a PROXY protocol header naming
    # the real sender (dicom_node.proxy_protocol): required from these addresses or networks, never read
    # from any other; empty: off
    proxy_protocol: list[str] = Field(default_factory=list)
    # What this process does (docs/cluster.md): several nodes on one database share the work by role
    roles: list[str] = Field(default_factory=lambda: list(NODE_ROLES))

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v)

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: list[str]) -> list[str]:
        unknown = [r for r in v if r not in NODE_ROLES]
        if unknown or not v or len(set(v)) != len(v):
            raise ValueError(f"a non-empty list of distinct roles out of {', '.join(NODE_ROLES)}"
                             + (f" (not {', '.join(map(repr, unknown))})" if unknown else ""))
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError("a host name or IP address")
        return v

    @field_validator("proxy_protocol")
    @classmethod
    def _proxy_protocol(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"the load balancers' addresses or networks, such as 127.0.0.1/32 or 10.0.0.0/24"
                                 f" (got {item!r})") from None
            if net.network_address != ipaddress.ip_interface(item).ip and "/" in item:
                raise ValueError(f"{item!r} has bits set past its prefix length: {net}?")
            if net.prefixlen == 0:
                raise ValueError(f"{item!r} would take a PROXY header from any address, letting every sender name"
                                 " its own: list the load balancers' addresses")
        return v


class StorageConfig(_Section):
    dir: Path = Path("./var")
    min_free_mb: int = Field(512, ge=0)
    max_instance_mb: int = Field(1024, ge=1)
    # None or "sqlite": node.db under dir (the embedded default); postgresql://user:pass@host:port/db:
    # several nodes on one PostgreSQL, dir then on a shared file system (docs/cluster.md)
    database: SecretStr | None = None
    # On a shared spool (database set): how often the node leading the schedules sweeps away what
    # killed nodes left (temporaries and files with no row, untouched for an hour; docs/cluster.md)
    shared_sweep_every_s: float = Field(900.0, gt=0)

    @field_validator("database")
    @classmethod
    def _database(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or v.get_secret_value() == "sqlite":
            return None
        url = v.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("sqlite, or a postgresql://user:password@host:port/database URL")
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("a postgresql:// URL needs a host and a database name")
        return v


class PeerRule(_Section):
    ae_title: str
    host: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v, wildcard=True)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ipaddress.ip_address(v)
        except ValueError as exc:
            raise ValueError("an IP address such as 127.0.0.1") from exc
        return v


class PeersConfig(_Section):
    allow_any: bool = False
    allowed: list[PeerRule] = Field(
        default_factory=lambda: [PeerRule(ae_title="MODALITY1"), PeerRule(ae_title="*", host="127.0.0.1")]
    )
    rate_limit_per_min: int = Field(0, ge=0)
    # Associations one calling AE title from one address may hold at once (0: only node.max_associations).
    max_associations_per_peer: int = Field(4, ge=0)


ResultKind = Literal["sr", "gsps", "sc"]
RESULT_KINDS: tuple[ResultKind, ...] = ("sr", "gsps", "sc")


class Destination(_Section):
    """Where results go: a DIMSE peer (``ae_title``, ``host``, ``port``: C-STORE, PS3.4 Annex B) or a
    DICOMweb origin server (``url``: STOW-RS, PS3.18 §10.5), exactly one of the two. A token or
    password is a :class:`SecretStr`, so neither a log line nor a printed config ever shows it."""

    name: str
    kinds: list[ResultKind] = Field(default_factory=lambda: list(RESULT_KINDS))
    # DIMSE
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    # DICOMweb: the service's base URL (…/dicom-web), a bearer token or HTTP Basic credentials
    url: str | None = None
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(60.0, gt=0, le=3600)
    max_request_mb: int = Field(64, ge=1, le=65536)  # one STOW-RS request carries at most this much
    # TLS to this destination (DICOM TLS, PS3.15 B.1, with tls: true; HTTPS with an https url): the
    # CA that signed its certificate (else the system's CAs), and this node's client certificate and
    # key when the destination requires one.
    tls_ca: Path | None = None
    tls_certificate: Path | None = None
    tls_key: Path | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else _check_ae_title(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else v.strip().rstrip("/")

    @property
    def is_dicomweb(self) -> bool:
        """A STOW-RS destination (``url``) rather than a C-STORE one."""
        return self.url is not None

    @property
    def address(self) -> str:
        """What ``dicom-node status`` shows: ``AE@HOST:PORT`` or the URL (never a credential)."""
        return self.url if self.url is not None else f"{self.ae_title}@{self.host}:{self.port}"

    @model_validator(mode="after")
    def _one_kind(self) -> Destination:
        # Checked here, not in field validators, so that no error echoes a token or password.
        where = f"destination {self.name!r}"
        if self.url is not None:
            _check_dicomweb(self, where)
        else:
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) is None]
            if len(missing) == 3:
                raise ValueError(f"{where}: give ae_title, host and port (DIMSE) or url (DICOMweb)")
            if missing:
                raise ValueError(f"{where}: {missing[0]} is missing (a DIMSE destination needs ae_title, host and"
                                 " port; a DICOMweb one needs url instead)")
            web_only = [k for k in _WEB_ONLY if k in self.model_fields_set]
            if web_only:
                raise ValueError(f"{where}: {web_only[0]} is only for a DICOMweb destination (url)")
            if not self.tls and (self.tls_ca or self.tls_certificate or self.tls_key):
                raise ValueError(f"{where}: tls_ca, tls_certificate and tls_key need tls: true")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError(f"{where}: tls_certificate and tls_key go together")
        return self


_WEB_ONLY = ("token", "username", "password", "timeout_s", "max_request_mb")
_HEADER_SAFE_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no blank: safe in an HTTP header


def _split_url(url: str) -> SplitResult | None:
    """``url`` split (RFC 3986), or None when it does not parse or its port is out of range."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port out of range raises here
    except ValueError:
        return None
    return parts


def _check_dicomweb(dest: Destination, where: str) -> None:
    """The keys of a STOW-RS destination (PS3.18 §10.5): an http(s) base URL without credentials in
    it, at most one kind of credentials, TLS files only with https."""
    dimse = [k for k in ("ae_title", "host", "port") if getattr(dest, k) is not None]
    if dimse or dest.tls:
        raise ValueError(f"{where}: url and ae_title/host/port exclude each other"
                         if dimse else f"{where}: tls is for DIMSE; a DICOMweb destination uses TLS by an https url")
    assert dest.url is not None
    parts = _split_url(dest.url)
    if parts is not None and (parts.username is not None or parts.password is not None):
        raise ValueError(f"{where}: url must not carry credentials; give username and password (or token)")
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{where}: url must be http:// or https://HOST[:PORT]/PATH without query,"
                         f" e.g. https://pacs/dicom-web (got {dest.url!r})")
    if parts.scheme != "https" and (dest.tls_ca or dest.tls_certificate or dest.tls_key):
        raise ValueError(f"{where}: tls_ca, tls_certificate and tls_key need an https url")
    if dest.token is not None and (dest.username is not None or dest.password is not None):
        raise ValueError(f"{where}: token and username/password exclude each other")
    if (dest.username is None) != (dest.password is None):
        raise ValueError(f"{where}: username and password go together")
    if dest.token is not None and not _HEADER_SAFE_RE.match(dest.token.get_secret_value()):
        raise ValueError(f"{where}: token must be printable ASCII characters without blanks")
    if dest.username is not None and (":" in dest.username or not _HEADER_SAFE_RE.match(dest.username)):
        raise ValueError(f"{where}: username must be printable ASCII characters without blanks or ':'")
    if dest.password is not None and any(c in dest.password.get_secret_value() for c in "\r\n\x00"):
        raise ValueError(f"{where}: password must not contain line breaks")


class WorkerConfig(_Section):
    threads: int = Field(1, ge=0, le=64)  # 0: this process only receives; another one analyses
    lease_s: float = Field(15.0, gt=0)  # heartbeat timeout: the holder renews every lease_s / 3
    max_attempts: int = Field(3, ge=1)
    batch_size: int = Field(4, ge=1, le=256)


class DeliveryConfig(_Section):
    max_attempts: int = Field(8, ge=1)
    backoff_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(600.0, gt=0)
    lease_s: float = Field(15.0, gt=0)  # heartbeat timeout of a delivery lease (renewed every lease_s / 3)
    return_to_sender: dict[str, str] = Field(default_factory=dict)


class ResultsConfig(_Section):
    ohif: bool = False  # SR tracking identifiers in the form OHIF's SR viewport reads


class ModelConfig(_Section):
    weights: Path | None = None
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)  # None: the checkpoint's own
    device: str = "auto"
    threads: int = Field(2, ge=1, le=256)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", v):
            raise ValueError("'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v


class RoutingConfig(_Section):
    """What the detector sees (``dicom_node.routing.decide``); ``""`` in ``views`` or ``body_parts``
    accepts an empty value even with ``assume_chest_when_unlabelled`` off."""

    modalities: list[str] = Field(default_factory=lambda: ["CR", "DX"])
    views: list[str] = Field(default_factory=lambda: ["PA", "AP"])
    body_parts: list[str] = Field(default_factory=lambda: ["CHEST"])
    require_for_presentation: bool = True
    #: A CR/DX whose Body Part Examined or View Position is empty is analysed as a frontal chest
    #: film, the assumption recorded in the SR and in ``dicom-node results``.
    assume_chest_when_unlabelled: bool = True
    #: Larger images (Rows x Columns, from the header, before any decoding) are stored but not
    #: analysed: a chest film is under 20 megapixels, and a small compressed or deflated instance
    #: can declare 10000 x 10000 (issue 12).
    max_megapixels: float = Field(50.0, gt=0)


class TwinConfig(_Section):
    sidecar_dir: Path = Path("./var/sidecar")
    sidecar_poll_s: float = Field(10.0, gt=0)
    evaluate_every_s: float = Field(60.0, gt=0)
    retention_days: int = Field(90, ge=1)
    max_clock_skew_s: float = Field(300.0, ge=0)  # a sidecar or header time further ahead is refused
    # named measurements of sidecar telemetry: {NAME: {unit, warn: [lo, hi], alert: [lo, hi], forecast}}
    # merged over twin.signals.DEFAULT_SIGNALS (a null entry removes a default); docs/twin.md
    signals: dict[str, dict[str, Any] | None] | None = None
    forecast_window_days: int = Field(60, ge=7, le=365)
    forecast_warn_days: float = Field(14.0, ge=0)
    forecast_alert_days: float = Field(3.0, ge=0)
    # tube wear (twin.tube, docs/twin.md): HU = tube_heat_unit_factor x kVp x mAs since the last `tube`
    # maintenance record, against the tube's rated life in heat units (null: unknown, load shown only)
    tube_rated_life: float | None = Field(None, gt=0)
    tube_heat_unit_factor: float = Field(1.35, gt=0, le=2)  # 1.0 single-phase, 1.35 high-frequency
    tube_rate_days: float = Field(30.0, gt=0, le=365)  # recent rate for the projected replacement
    tube_warn_fraction: float = Field(0.8, gt=0, le=1)
    tube_alert_fraction: float = Field(0.95, gt=0, le=1)
    # AI watch (twin.ai_watch, docs/twin.md): each device's positive rate and score distribution
    # against its own baseline; a false WARN at most ai_alpha per daily look
    ai_baseline_n: int = Field(200, ge=10, le=100000)
    ai_change_n: int = Field(800, ge=10, le=100000)
    ai_min_images: int = Field(50, ge=5, le=100000)
    ai_window_days: int = Field(7, ge=1, le=60)
    ai_alpha: float = Field(1e-4, gt=0, lt=1)

    @model_validator(mode="after")
    def _check_signals(self) -> TwinConfig:
        from twin.signals import signals_from_config

        signals_from_config(self.signals)  # raises ValueError naming the field
        if self.forecast_alert_days > self.forecast_warn_days:
            raise ValueError("twin.forecast_alert_days must not exceed twin.forecast_warn_days")
        if self.tube_warn_fraction > self.tube_alert_fraction:
            raise ValueError("twin.tube_warn_fraction must not exceed twin.tube_alert_fraction")
        if self.ai_min_images > min(self.ai_baseline_n, self.ai_change_n):
            raise ValueError("twin.ai_min_images must not exceed twin.ai_baseline_n or twin.ai_change_n")
        return self

    def thresholds(self) -> Thresholds:
        """The twin's :class:`twin.health.Thresholds` with these signals, forecast, tube and AI settings."""
        from twin.health import Thresholds
        from twin.signals import signals_from_config

        return Thresholds(
            signals=signals_from_config(self.signals),
            forecast_window_days=self.forecast_window_days,
            forecast_warn_days=self.forecast_warn_days,
            forecast_alert_days=self.forecast_alert_days,
            **{name: getattr(self, name) for name in TWIN_THRESHOLD_KEYS},
        )


#: twin settings that are fields of twin.health.Thresholds under the same name
TWIN_THRESHOLD_KEYS = (
    "tube_rated_life", "tube_heat_unit_factor", "tube_rate_days", "tube_warn_fraction", "tube_alert_fraction",
    "ai_baseline_n", "ai_change_n", "ai_min_images", "ai_window_days", "ai_alpha",
)


ADMIN_TOKEN_MIN = 16
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")


class AdminConfig(_Section):
    """The admin console. Its HTTP limits keep a flood of slow clients from taking the descriptors and
    threads the DICOM receiver needs (docs/reliability.md, section 11)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str | None = None
    max_connections: int = Field(64, ge=1, le=1024)  # open HTTP connections; more are answered 503 and closed
    header_timeout_s: float = Field(10.0, gt=0, le=300)  # to send a request's headers (slowloris)
    keepalive_timeout_s: int = Field(5, ge=1, le=300)  # an idle keep-alive connection is closed after this

    @model_validator(mode="after")
    def _loopback_or_token(self) -> AdminConfig:
        # Checked here, not in a field validator, so that the error never echoes the token.
        if self.token is not None and (len(self.token) < ADMIN_TOKEN_MIN or not _TOKEN_RE.match(self.token)):
            raise ValueError(f"admin.token must be {ADMIN_TOKEN_MIN} or more printable ASCII characters without"
                             f" blanks (got {len(self.token)}); leave it null for none")
        if self.enabled and self.token is None and not _is_loopback(self.host):
            raise ValueError(f"admin.host {self.host} is not loopback: set admin.token first")
        return self


class DicomWebConfig(_Section):
    """The DICOMweb listener (PS3.18: STOW-RS in, QIDO-RS, WADO-RS) at ``http(s)://host:port/dicom-web``.

    Off unless enabled. Who may call: a client address in ``allowed_hosts`` (addresses or networks),
    then, with ``token`` set, ``Authorization: Bearer <token>``; HTTPS with ``tls`` (``ca`` given:
    client certificates required), as for DICOM TLS. See docs/dicomweb.md.
    """

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = Field(8081, ge=0, le=65535)
    token: str | None = None
    tls: TLSConfig | None = None
    allowed_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_request_mb: int = Field(4096, ge=1)  # a STOW-RS body past this is refused (413); a part: max_instance_mb
    max_connections: int = Field(32, ge=1, le=1024)  # open HTTP connections; more are answered 503 and closed
    header_timeout_s: float = Field(10.0, gt=0, le=300)  # to send a request's headers (slowloris)
    request_timeout_s: float = Field(900.0, gt=0)  # to send a whole request and read its answer
    keepalive_timeout_s: int = Field(5, ge=1, le=300)
    # The base URL clients use (a DNS name, a proxy in front): what `dicom-node results` and the admin
    # console link to; else http(s)://host:port/dicom-web, this machine's name for a host of 0.0.0.0.
    public_url: str | None = None

    @field_validator("allowed_hosts")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"addresses or networks such as 127.0.0.1 or 10.0.0.0/8 (got {item!r})") from exc
        return v

    @model_validator(mode="after")
    def _token(self) -> DicomWebConfig:
        # As for admin.token, and checked here so that the error never echoes the token.
        if self.token is not None and (len(self.token) < ADMIN_TOKEN_MIN or not _TOKEN_RE.match(self.token)):
            raise ValueError(f"dicomweb.token must be {ADMIN_TOKEN_MIN} or more printable ASCII characters"
                             f" without blanks (got {len(self.token)}); leave it null for none")
        if self.public_url is not None:  # here too, so that a URL with a password in it is not echoed
            url = self.public_url.strip().rstrip("/")
            parts = _split_url(url)
            if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query
                    or parts.fragment or parts.username is not None or parts.password is not None):
                raise ValueError("dicomweb.public_url must be http:// or https://HOST[:PORT]/PATH without query"
                                 " or credentials, e.g. https://node.example.org/dicom-web")
            if url != self.public_url:
                self.public_url = url
        return self


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_mb: int = Field(20, ge=1)
    backups: int = Field(5, ge=0)
    # None: storage.dir/logs, or storage.dir/logs/<host name> when nodes share storage.dir (a rotating
    # log file is one process's): set it for several nodes on one host
    dir: Path | None = None


class Config(_Section):
    """Every setting of the node; see config.yaml for each key's meaning."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    peers: PeersConfig = Field(default_factory=PeersConfig)
    destinations: list[Destination] = Field(default_factory=list)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    twin: TwinConfig = Field(default_factory=TwinConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    dicomweb: DicomWebConfig = Field(default_factory=DicomWebConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _unique_destinations(self) -> Config:
        names = [d.name for d in self.destinations]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"destinations: name {sorted(dup)[0]!r} is used twice; names must be unique")
        for ae, name in self.delivery.return_to_sender.items():
            if name not in names:
                raise ValueError(f"delivery.return_to_sender.{ae}: no destination named {name!r}")
        return self

    @property
    def db_path(self) -> Path:
        """The embedded SQLite file (whether or not ``storage.database`` points elsewhere)."""
        return self.storage.dir / "node.db"

    @property
    def database(self) -> str:
        """Where the store lives: the ``storage.database`` URL, else the SQLite file's path."""
        url = self.storage.database
        return url.get_secret_value() if url is not None else str(self.db_path)

    @property
    def spool_dir(self) -> Path:
        return self.storage.dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.storage.dir / "outbox"

    @property
    def log_dir(self) -> Path:
        """Where this node's log files go (``logging.dir``; see LoggingConfig)."""
        if self.logging.dir is not None:
            return self.logging.dir
        if self.storage.database is not None:
            import socket

            return self.storage.dir / "logs" / socket.gethostname()
        return self.storage.dir / "logs"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    if kind == "missing":
        return f"{loc}: required key is missing"
    if isinstance(got, dict | list) or str(err["loc"][-1]) in _SECRET_KEYS:  # a secret is never echoed
        return f"{loc}: {msg}" if loc else msg
    return f"{loc}: {msg} (got {got!r})" if loc else msg


_SECRET_KEYS = ("token", "password", "database")  # a database URL carries its password


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at the parent of ``loc``, to name them in an 'unknown key' error."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        for candidate in getattr(ann, "__args__", (ann,)):
            inner = getattr(candidate, "__args__", (candidate,))
            for c in (candidate, *inner):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    current = c
                    break
    return sorted(current.model_fields) if hasattr(current, "model_fields") else []


def parse_config(data: dict[str, Any] | None, source: str = "config") -> Config:
    """Validate a mapping; raise :class:`ConfigError` with one line naming the first bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        line = _describe(err)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(Config, tuple(err["loc"]))
            if allowed:
                line += f"; allowed: {', '.join(allowed)}"
        raise ConfigError(f"{source}: {line}") from None


def resolve_path(path: str | Path | None) -> Path | None:
    """``--config`` wins, then ``$DICOM_NODE_CONFIG``, then ./config.yaml when present."""
    if path:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate the settings; relative paths in the file are relative to the file."""
    resolved = resolve_path(path)
    if resolved is None:
        return Config()
    if not resolved.exists():
        raise ConfigError(f"{resolved}: no such configuration file")
    try:
        data = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{resolved}:{where} is not valid YAML") from None
    cfg = parse_config(data, str(resolved))
    return _anchor_paths(cfg, resolved.parent.resolve())


def _anchor_paths(cfg: Config, base: Path) -> Config:
    def anchor(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    cfg.storage.dir = anchor(cfg.storage.dir)
    if cfg.logging.dir is not None:
        cfg.logging.dir = anchor(cfg.logging.dir)
    cfg.twin.sidecar_dir = anchor(cfg.twin.sidecar_dir)
    if cfg.model.weights is not None:
        cfg.model.weights = anchor(cfg.model.weights)
    if cfg.node.tls is not None:
        cfg.node.tls.certificate = anchor(cfg.node.tls.certificate)
        cfg.node.tls.key = anchor(cfg.node.tls.key)
        if cfg.node.tls.ca is not None:
            cfg.node.tls.ca = anchor(cfg.node.tls.ca)
    web_tls = cfg.dicomweb.tls
    if web_tls is not None:
        web_tls.certificate, web_tls.key = anchor(web_tls.certificate), anchor(web_tls.key)
        web_tls.ca = anchor(web_tls.ca) if web_tls.ca is not None else None
    for dest in cfg.destinations:
        for key in ("tls_ca", "tls_certificate", "tls_key"):
            value = getattr(dest, key)
            if value is not None:
                setattr(dest, key, anchor(value))
    return cfg
