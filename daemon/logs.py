"""Logging to the settings directory and stderr, with keys and tokens scrubbed from every line."""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys

from .paths import Paths

# LLMTune keys (sk_...), local tokens (lct_...) and bearer headers, wherever they would appear.
SECRET_PATTERN = re.compile(r"(sk_|lct_|ctl_)[A-Za-z0-9_\-]{4,}|(?i:bearer\s+)[A-Za-z0-9_\-.]{8,}")


def redact(text: str) -> str:
    return SECRET_PATTERN.sub(lambda m: (m.group(1) or "Bearer ") + "[redacted]", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
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
        return True


def configure(paths: Paths, level: str = "INFO", *, to_stderr: bool = True) -> None:
    paths.ensure()
    root = logging.getLogger("llmtune_companion")
    root.setLevel(level.upper())
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(paths.log_file, maxBytes=5 * 1024 * 1024, backupCount=3,
                                             encoding="utf-8")
    ]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
