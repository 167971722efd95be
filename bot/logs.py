"""Logging setup: console or JSON lines, with secrets scrubbed from every record."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_SECRET_RE = re.compile(
    r"(xox[abposr]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|sk_(?:live|test)_[A-Za-z0-9]+|"
    r"rk_(?:live|test)_[A-Za-z0-9]+|whsec_[A-Za-z0-9+/=]+|sk-[A-Za-z0-9_\-]{16,}|"
    r"Bearer\s+[A-Za-z0-9._\-]+)"
)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def scrub(text: str) -> str:
    """Replace anything that looks like a token or key with `[secret]`."""
    return _SECRET_RE.sub("[secret]", text)


class ScrubFilter(logging.Filter):
    """Scrubs secrets out of the message and extra fields of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        record.msg = scrub(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, scrub(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            data["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


class ConsoleFormatter(logging.Formatter):
    """Readable lines with extra fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record."""
        base = super().format(record)
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        )
        text = f"{base} {extras}" if extras else base
        return scrub(text)


def configure(level: str = "INFO", fmt: str = "console") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ScrubFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Bolt and aiohttp access logs are chatty at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
