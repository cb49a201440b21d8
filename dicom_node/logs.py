"""Logging: readable lines on the console, structured JSON lines in ``storage.dir/logs`` (rotated).

Log records carry UIDs, AE titles, addresses, codes and counts as ``extra`` fields, never patient
names or IDs. The JSON file is what ``dicom-node logs`` renders and what a log shipper reads.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

LOG_FILE = "node.jsonl"
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC ISO 8601), level, logger, message and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: _plain(v) for k, v in record_extras(record).items()})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, ensure_ascii=False)


# C0 controls but tab (newline too: a value must not forge a log line), DEL, C1 (0x9b is a CSI on
# its own), and the Unicode format characters that reorder or hide text on a terminal.
_CONSOLE_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def console_safe(text: object) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\n``): header strings,
    AE titles and file names reach the console from outside, and raw ESC sequences would drive the
    admin's terminal (issue 12)."""
    return _CONSOLE_UNSAFE.sub(_escape_char, str(text))


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    if c == "\n":
        return "\\n"
    if c == "\r":
        return "\\r"
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message key=value …`` for people at a terminal; every field is passed
    through :func:`console_safe`."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{console_safe(k)}={console_safe(v)}" for k, v in record_extras(record).items())
        head = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {console_safe(record.levelname):<7} " \
               f"{console_safe(record.name.removeprefix('dicom_node.'))}: {console_safe(record.getMessage())}"
        return f"{head} {extras}".rstrip()


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool | type(None) | list | dict) else str(v)


def setup_logging(level: str = "INFO", log_dir: Path | None = None, *, max_mb: int = 20, backups: int = 5,
                  console: bool = True) -> None:
    """Configure the root logger once per process (safe to call again: handlers are replaced)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(level)
    if console:
        ch = logging.StreamHandler(sys.stderr)
        ch.setFormatter(ConsoleFormatter())
        root.addHandler(ch)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            log_dir / LOG_FILE, maxBytes=max_mb * 2**20, backupCount=backups, encoding="utf-8"
        )
        fh.setFormatter(JsonFormatter())
        root.addHandler(fh)
    # pydicom warns with the offending element's value, which may be patient data: not in our logs.
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    # pynetdicom logs PDU contents at DEBUG and dataset summaries at INFO: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # highdicom narrates every attribute module it copies (16 lines a result object): warnings only.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
