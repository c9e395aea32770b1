"""The server's log, `logs/server.log`: lines a person can follow.

- Every line written while a request is handled names it, `[req <id>]`, the id of its `X-Request-Id`
  header and its line in `logs/access.jsonl` (the guard sets `REQUEST_ID`; a thread started for the
  request copies it). Lines outside a request (start-up, a pull running on alone) have none.
- The libraries an import runs chatter: ONNX Runtime's quantiser (partly on the root logger), onnx and
  the gguf writer. Their lines go to DEBUG, so `--log-level debug` shows them and the default does not.
- huggingface_hub warns on every retry of a flaky request; each such warning is shown once in
  `HUB_REPEAT_S`, its repeats go to DEBUG.
- The file rotates as the access log does (10 MiB, 5 files kept). The lines also go to stderr, but
  only the errors when stderr is `logs/server.out`, where `cortex start` (in the background) keeps the
  child's raw output and shows its end when the start fails: that file does not rotate, so it must not
  take every line a second time.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time
from contextvars import ContextVar
from pathlib import Path

REQUEST_ID: ContextVar[str | None] = ContextVar("cortex_request_id", default=None)
FORMAT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"
ROTATE_BYTES = 10 * 2**20
ROTATE_KEEP = 5
SERVER_LOG = "server.log"
RAW_OUTPUT = "server.out"  # the background server's stdout and stderr (cli/daemon.py)
HUB_REPEAT_S = 300.0
_NOISY = ("onnxruntime", "onnx", "gguf", "metadata")  # `metadata`: gguf's own name for one of its loggers
_NOISY_PATHS = tuple(f"{os.sep}{name}{os.sep}" for name in ("onnxruntime", "onnx", "gguf"))
_HUB_RETRY = re.compile(r"Retry|thrown while requesting|Rate limited")
_DIGITS = re.compile(r"\d+")


class RequestIdFilter(logging.Filter):
    """Adds `%(request)s`: ` [req <id>]` inside a request, empty outside."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request = f" [req {request_id}]" if request_id else ""
        return True


class QuietLibraries(logging.Filter):
    """Moves the libraries' chatter to DEBUG (see the module's doc) and drops it below `level`."""

    def __init__(self, level: int, repeat_s: float = HUB_REPEAT_S) -> None:
        super().__init__()
        self.level = level
        self.repeat_s = repeat_s
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "cortex_quiet"):  # decided once per line, whichever handler sees it first
            record.cortex_quiet = record.levelno > logging.DEBUG and (self._noisy(record) or self._repeated(record))
            if record.cortex_quiet:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.level

    @staticmethod
    def _noisy(record: logging.LogRecord) -> bool:
        top = record.name.split(".")[0]
        if top in _NOISY:
            return True
        return record.name == "root" and any(part in record.pathname for part in _NOISY_PATHS)

    def _repeated(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("huggingface_hub") or not _HUB_RETRY.search(record.getMessage()):
            return False
        key = _DIGITS.sub("#", record.getMessage())
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self.repeat_s:
            return True
        self._seen[key] = now
        return False


def _is_raw_output(logs_dir: Path) -> bool:
    """True if this process's stderr is logs/server.out (started in the background by the CLI)."""
    try:
        err, raw = os.fstat(sys.stderr.fileno()), (logs_dir / RAW_OUTPUT).stat()
    except (OSError, ValueError, AttributeError):
        return False
    return (err.st_dev, err.st_ino) == (raw.st_dev, raw.st_ino)


def configure(level: str, logs_dir: Path | None) -> list[logging.Handler]:
    """Send every logger's lines (cortex's, uvicorn's, the libraries') to logs/server.log when `logs_dir`
    is given, and to stderr (see the module's doc). Replaces the root logger's handlers; returns them."""
    threshold = logging.getLevelName(level.upper())
    handlers: list[logging.Handler] = []
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                logs_dir / SERVER_LOG, maxBytes=ROTATE_BYTES, backupCount=ROTATE_KEEP, encoding="utf-8"
            )
        )
    stderr = logging.StreamHandler(sys.stderr)
    if logs_dir is not None and _is_raw_output(logs_dir):
        stderr.setLevel(logging.ERROR)  # what `cortex start` shows when the start fails (a port in use)
    handlers.append(stderr)
    quiet = QuietLibraries(threshold)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(RequestIdFilter())
        handler.addFilter(quiet)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(threshold)
    return handlers
