"""logs.py: keys (sk_), local tokens (lct_), control tokens (ctl_) and bearer headers never reach a log."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator

import pytest
from llmtune_companion import logs
from llmtune_companion.api.control import load_control_token
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config, new_token

from tests.conftest import WORKSPACE_KEY

ROOT_LOGGER = "llmtune_companion"


# Failing tests must not print secrets either: these raise without pytest showing the values compared.
def assert_secret_free(*texts: str | bytes, secrets: Iterable[str]) -> None:
    wanted = [s for s in secrets if s]
    leaked = [i for i, text in enumerate(texts)
              if any((s.encode() if isinstance(text, bytes) else s) in text for s in wanted)]
    if leaked:
        raise AssertionError(f"a key or token appears in text #{leaked}")


def assert_same_secret(actual: str | None, expected: str | None, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: the values differ")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.configure changes the package logger for the whole process: put it back afterwards."""
    root = logging.getLogger(ROOT_LOGGER)
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers, level, propagate = saved
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = propagate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key={WORKSPACE_KEY}", "key=sk_[redacted]"),
        ("token lct_AbC-dEf_0123456789xyz done", "token lct_[redacted] done"),
        ("control ctl_ZZZZ-9999_abcd.", "control ctl_[redacted]."),
        ("Authorization: Bearer abc.def-ghi_jkl", "Authorization: Bearer [redacted]"),
        ("authorization: bearer Zm9vYmFyYmF6cXV4", "authorization: Bearer [redacted]"),
        ('{"Authorization": "BEARER 0123456789"}', '{"Authorization": "Bearer [redacted]"}'),
        ("two: sk_aaaaaaaa and lct_bbbbbbbb", "two: sk_[redacted] and lct_[redacted]"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert logs.redact(text) == expected


@pytest.mark.parametrize("text", ["GET /v1/models 200 12.5ms", "model=meta-llama/Llama-3.3-70B-Instruct", "sk_ab"])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert logs.redact(text) == text


def test_real_tokens_are_wholly_redacted(home: Paths) -> None:
    token = new_token()
    control = load_control_token(home)
    line = logs.redact(f"tokens {token} {control} Bearer {token}")
    assert_secret_free(line, secrets=[token[4:12], control[4:12]])  # not even a part survives
    assert line == "tokens lct_[redacted] ctl_[redacted] Bearer [redacted]"


def make_record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(ROOT_LOGGER, logging.WARNING, __file__, 1, msg, args, exc_info)


def test_filter_redacts_arguments_and_tracebacks() -> None:
    record = make_record("backend %r said %s", "llmtune", f"bad key {WORKSPACE_KEY}")
    assert logs.RedactingFilter().filter(record) is True
    assert record.getMessage() == "backend 'llmtune' said bad key sk_[redacted]"
    try:
        raise ValueError(f"upstream echoed Bearer {WORKSPACE_KEY}")
    except ValueError as exc:
        record = make_record("request failed", exc=exc)
    logs.RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert "request failed" in formatted and "ValueError" in formatted
    assert_secret_free(formatted, secrets=[WORKSPACE_KEY])
    record = make_record("plain message")
    logs.RedactingFilter().filter(record)
    assert record.getMessage() == "plain message"


def test_configure_writes_a_redacted_log_file(
    home: Paths, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure(home, "DEBUG")
    token = load_config(home).workspaces["default"].token
    log = logging.getLogger("llmtune_companion.test")
    log.debug("debug line with %s", token)
    log.warning("upstream said Authorization: Bearer %s", WORKSPACE_KEY)
    try:
        raise RuntimeError(f"boom {WORKSPACE_KEY}")
    except RuntimeError:
        log.exception("handler failed")
    for handler in logging.getLogger(ROOT_LOGGER).handlers:
        handler.flush()
    text = home.log_file.read_text(encoding="utf-8")
    assert "debug line with lct_[redacted]" in text
    assert "Bearer [redacted]" in text and "handler failed" in text and "RuntimeError: boom" in text
    err = capsys.readouterr().err
    assert "handler failed" in err
    assert_secret_free(text, err, secrets=[WORKSPACE_KEY, token])


def test_configure_twice_does_not_duplicate_lines(home: Paths, restore_logging: None) -> None:
    logs.configure(home, "INFO", to_stderr=False)
    logs.configure(home, "INFO", to_stderr=False)
    root = logging.getLogger(ROOT_LOGGER)
    assert len(root.handlers) == 1
    assert root.propagate is False
    log = logging.getLogger("llmtune_companion.test")
    log.info("once")
    log.debug("hidden at INFO")
    root.handlers[0].flush()
    text = home.log_file.read_text(encoding="utf-8")
    assert text.count("once") == 1
    assert "hidden at INFO" not in text


async def test_request_log_batches_lines_each_with_its_time(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from llmtune_companion.logs import RequestLog

    logger = logging.getLogger("llmtune_companion.requests.test")
    logger.setLevel(logging.INFO)
    request_log = RequestLog(logger, interval=0.05)
    with caplog.at_level(logging.INFO, logger=logger.name):
        request_log.add("POST /v1/chat/completions model='echo' backend=echo status=200 0.4ms")
        request_log.add("GET /v1/models model=None backend=echo status=200 0.1ms")
        assert not caplog.records  # held for the batch
        await asyncio.sleep(0.15)
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    lines = text.splitlines()
    assert lines[0] == "2 requests"
    assert all(re.match(r"^  \d\d:\d\d:\d\d\.\d{3} ", line) for line in lines[1:])
    assert "POST /v1/chat/completions" in lines[1] and "GET /v1/models" in lines[2]
