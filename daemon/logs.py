"""Logging to the settings directory and stderr, with keys and tokens scrubbed from every line."""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from .config.paths import Paths

if TYPE_CHECKING:
    from .history import History, RequestRecord

# LLMTune keys (sk_...), local tokens (lct_...) and bearer headers, wherever they would appear.
# Every match contains one of SECRET_HINTS (compared lower-cased): extend both together.
SECRET_PATTERN = re.compile(r"(sk_|lct_|ctl_)[A-Za-z0-9_\-]{4,}|(?i:bearer\s+)[A-Za-z0-9_\-.]{8,}")
SECRET_HINTS = ("sk_", "lct_", "ctl_", "bearer")


def redact(text: str) -> str:
    # Most lines carry no secret: substring tests are ~10x cheaper than running the pattern on them.
    lowered = text.lower()
    if not any(hint in lowered for hint in SECRET_HINTS):
        return text
    return SECRET_PATTERN.sub(lambda m: (m.group(1) or "Bearer ") + "[redacted]", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get("_companion_redacted"):
            return True  # already scrubbed by the filter of another handler (file, then stderr)
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # A traceback quotes exception messages, which may carry a key: scrub it too.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record.__dict__["_companion_redacted"] = True
        return True


class OnceFormatter(logging.Formatter):
    """Formats a record once however many times it is asked (the file's size check, file, stderr)."""

    def format(self, record: logging.LogRecord) -> str:
        cached: tuple[Any, str] | None = record.__dict__.get("_companion_formatted")
        if cached is not None and cached[0] is self:
            return cached[1]
        text = super().format(record)
        record.__dict__["_companion_formatted"] = (self, text)
        return text


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler whose "never roll over a non-regular file" check (two stat calls) runs once per
    opened file instead of once per line; rollover still happens at the same size."""

    _checked_stream: Any = None
    _regular_file = True

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        if self._checked_stream is not self.stream:
            self._checked_stream = self.stream
            self._regular_file = not (os.path.exists(self.baseFilename) and not os.path.isfile(self.baseFilename))
        if not self._regular_file:
            return False
        if self.maxBytes > 0:
            size = len(self.format(record)) + 1
            # seek() returns the new position, as tell() would: one lseek per line instead of two.
            if self.stream.seek(0, 2) + size >= self.maxBytes:
                return True
        return False


LEVEL_ENV = "LLMTUNE_COMPANION_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_level(level: str) -> str:
    """A log level name, upper-cased; ValueError naming the variable and the choices otherwise."""
    name = level.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"{LEVEL_ENV}={level!r} is not a log level; use one of {', '.join(LEVELS)}")
    return name


def configure(paths: Paths, level: str = "INFO", *, to_stderr: bool = True) -> None:
    name = check_level(level)
    paths.ensure()
    root = logging.getLogger("llmtune_companion")
    root.setLevel(name)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    # One formatter for every handler, so a line is formatted once and written twice.
    formatter = OnceFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [
        LogFileHandler(paths.log_file, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
    ]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    # Errors raised outside our handlers (aiohttp's server, the event loop's unretrieved exceptions) go
    # to the same file: a daemon started at login has no terminal to show stderr.
    for name in FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        for handler in list(foreign.handlers):
            if getattr(handler, "companion_handler", False):
                foreign.removeHandler(handler)
        foreign.setLevel(logging.WARNING)
        foreign.propagate = False
        for handler in handlers:
            wrapped = _Forwarding(handler)
            foreign.addHandler(wrapped)


FOREIGN_LOGGERS = ("aiohttp", "asyncio")


class _Forwarding(logging.Handler):
    """Hands a foreign logger's records to one of ours (its filter, formatter and file)."""

    companion_handler = True

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(logging.WARNING)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


class RequestLog:
    """One line per request, written in batches.

    Request lines are many and alike; sending each through logging's per-record machinery (record,
    filters, formatter, two handlers, a write) costs more than the rest of the relay's own work, so
    lines are collected and handed to the logger as one record per `interval`, each line keeping its
    own time. Secrets are scrubbed from the batch like from any record.
    """

    def __init__(self, logger: logging.Logger, interval: float = 0.25, max_lines: int = 512,
                 history: History | None = None) -> None:
        self.logger = logger
        self.history = history
        self.interval = interval
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

    def record(self, record: RequestRecord, *, line: bool = True) -> None:
        """One finished request: into the history (the dashboard's Activity) and, with `line`, the log."""
        if self.history is not None:
            self.history.add(record)
        if line:
            self.add(record.line())

    def add(self, line: str) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%H:%M:%S", time.localtime(second))
        self._lines.append(f"  {self._second_text}.{int((now - second) * 1000):03d} {line}")
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        if lines:
            noun = "request" if len(lines) == 1 else "requests"
            self.logger.info("%d %s\n%s", len(lines), noun, "\n".join(lines))
