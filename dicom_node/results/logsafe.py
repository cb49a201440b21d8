"""Keeping patient data out of the node's logs while the result objects are built.

pydicom and highdicom quote a header value they find invalid in their warnings and log records;
:func:`no_patient_data_in_logs` wraps each builder so that none of those reach the log.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

_F = TypeVar("_F", bound=Callable[..., Any])

_QUOTING_MESSAGES = (
    # pydicom quotes the invalid value, highdicom the patient's name: both may be patient data
    re.compile(r"Invalid value for VR|value length .* exceeds|is unlikely to represent the intended "
               r"person name|potentially invalid|patient_name"),
)


class _NoQuotedValues(logging.Filter):
    """Drop log records that quote a header value (no patient data in logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in _QUOTING_MESSAGES)


def no_patient_data_in_logs(builder: _F) -> _F:
    """Run a builder with pydicom's and highdicom's value-quoting warnings and log records
    suppressed: they would copy a source's (patient's) values into the node's logs.

    ``warnings.catch_warnings`` is process-wide: builders running in parallel threads may see
    each other's filters, which only ever suppress more.
    """

    @functools.wraps(builder)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        log_filter = _NoQuotedValues()
        loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom", "highdicom.base")]
        for lg in loggers:
            lg.addFilter(log_filter)
        try:
            with warnings.catch_warnings():
                for pattern in _QUOTING_MESSAGES:
                    warnings.filterwarnings("ignore", message=f".*(?:{pattern.pattern})")
                return builder(*args, **kwargs)
        finally:
            for lg in loggers:
                lg.removeFilter(log_filter)

    return cast(_F, wrapper)
