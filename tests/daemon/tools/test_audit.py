from __future__ import annotations

import stat
from pathlib import Path

import orjson
from llmtune_companion.config.paths import Paths
from llmtune_companion.tools import AuditLog, audit_file
from llmtune_companion.tools.audit import scrub

KEY = "sk_live_abcdefghijklmnop0123"
TOKEN = "lct_" + "x" * 40


def test_records_are_json_lines_with_contents_cut(tmp_path: Path) -> None:
    log = AuditLog.for_paths(Paths(tmp_path))
    log.record(workspace="default", tool="write_file", arguments={"path": "a.txt", "content": "y" * 5000},
               decision="allow", decided_by="user:cli", ok=True, result_bytes=31, duration_ms=12.345,
               call_id="call_1", approval_id="apr_1", extra={"undo_id": "u1"})
    log.record(workspace="default", tool="read_file", arguments={"path": "b"}, decision="allow",
               decided_by="default", ok=False, result_bytes=20, duration_ms=0.4)
    path = audit_file(Paths(tmp_path))
    assert path == tmp_path / "logs" / "tools-audit.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert {"time", "workspace", "tool", "arguments", "decision", "decided_by", "ok", "result_bytes",
            "duration_ms"} <= set(first)
    assert first["arguments"]["path"] == "a.txt"
    assert first["arguments"]["content"].startswith("y" * 200)
    assert first["arguments"]["content"].endswith("[5000 chars]")
    assert len(first["arguments"]["content"]) < 230
    assert (first["decision"], first["decided_by"], first["duration_ms"], first["undo_id"]) == (
        "allow", "user:cli", 12.3, "u1")
    assert log.tail(1) == [lines[1]]


def test_no_secrets_reach_the_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record(
        workspace="default",
        tool="run_terminal",
        arguments={"command": f"curl -H 'Authorization: Bearer {KEY}' https://x && OPENAI_API_KEY=abc123 npm test "
                              f"--password hunter2 --token={TOKEN}"},
        decision="allow", decided_by="user:cli", ok=True, result_bytes=1, duration_ms=1,
        reason=f"key {KEY}",
    )
    log.record(workspace="default", tool="write_file",
               arguments={"path": ".env", "content": f'LLMTUNE_API_KEY={KEY}\n"db_password": "s3cret"\n'},
               decision="deny", decided_by="protected", ok=False, result_bytes=1, duration_ms=1)
    text = (tmp_path / "audit.jsonl").read_text()
    for secret in (KEY, TOKEN, "abc123", "hunter2", "s3cret", "sk_live"):
        assert secret not in text
    assert "npm test" in text and "[redacted]" in text


def test_scrub_leaves_ordinary_text_alone() -> None:
    assert scrub("git log --oneline -n 5") == "git log --oneline -n 5"
    assert scrub("the keyboard layout") == "the keyboard layout"
    assert scrub("GITHUB_TOKEN=ghp_abc make") == "GITHUB_TOKEN=[redacted] make"


def test_rotation(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=500)
    for index in range(10):
        log.record(workspace="w", tool="read_file", arguments={"path": f"f{index}"}, decision="allow",
                   decided_by="default", ok=True, result_bytes=1, duration_ms=1)
    assert (tmp_path / "audit.jsonl.1").exists()
    assert (tmp_path / "audit.jsonl").stat().st_size < 1000
