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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError("a host name or IP address")
        return v


class StorageConfig(_Section):
    dir: Path = Path("./var")
    min_free_mb: int = Field(512, ge=0)
    max_instance_mb: int = Field(1024, ge=1)


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
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    kinds: list[ResultKind] = Field(default_factory=lambda: list(RESULT_KINDS))
    tls: bool = False
    # DICOM TLS to this destination (PS3.15 B.1): the CA that signed its certificate (else the
    # system's CAs), and this node's client certificate and key when the destination requires one.
    tls_ca: Path | None = None
    tls_certificate: Path | None = None
    tls_key: Path | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _check_ae_title(v)

    @model_validator(mode="after")
    def _tls_files(self) -> Destination:
        if not self.tls and (self.tls_ca or self.tls_certificate or self.tls_key):
            raise ValueError(f"destination {self.name!r}: tls_ca, tls_certificate and tls_key need tls: true")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError(f"destination {self.name!r}: tls_certificate and tls_key go together")
        return self


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

    @model_validator(mode="after")
    def _check_signals(self) -> TwinConfig:
        from twin.signals import signals_from_config

        signals_from_config(self.signals)  # raises ValueError naming the field
        if self.forecast_alert_days > self.forecast_warn_days:
            raise ValueError("twin.forecast_alert_days must not exceed twin.forecast_warn_days")
        return self

    def thresholds(self) -> Thresholds:
        """The twin's :class:`twin.health.Thresholds` with these signals and forecast settings."""
        from twin.health import Thresholds
        from twin.signals import signals_from_config

        return Thresholds(
            signals=signals_from_config(self.signals),
            forecast_window_days=self.forecast_window_days,
            forecast_warn_days=self.forecast_warn_days,
            forecast_alert_days=self.forecast_alert_days,
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


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_mb: int = Field(20, ge=1)
    backups: int = Field(5, ge=0)


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
        return self.storage.dir / "node.db"

    @property
    def spool_dir(self) -> Path:
        return self.storage.dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.storage.dir / "outbox"

    @property
    def log_dir(self) -> Path:
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
    if isinstance(got, dict | list):
        return f"{loc}: {msg}" if loc else msg
    return f"{loc}: {msg} (got {got!r})" if loc else msg


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
    cfg.twin.sidecar_dir = anchor(cfg.twin.sidecar_dir)
    if cfg.model.weights is not None:
        cfg.model.weights = anchor(cfg.model.weights)
    if cfg.node.tls is not None:
        cfg.node.tls.certificate = anchor(cfg.node.tls.certificate)
        cfg.node.tls.key = anchor(cfg.node.tls.key)
        if cfg.node.tls.ca is not None:
            cfg.node.tls.ca = anchor(cfg.node.tls.ca)
    for dest in cfg.destinations:
        for key in ("tls_ca", "tls_certificate", "tls_key"):
            value = getattr(dest, key)
            if value is not None:
                setattr(dest, key, anchor(value))
    return cfg
