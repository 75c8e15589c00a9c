"""The request history on its own: the bounded store, usage found at the end of an answer, the buckets."""

from __future__ import annotations

import time
from pathlib import Path

from llmtune_companion.history import History, RequestRecord, summarise, usage_from_bytes


def record(when: float, backend: str = "echo", duration: float = 10.0, tokens: int | None = None) -> RequestRecord:
    return RequestRecord(when, "POST", "/v1/chat/completions", "default", "m", backend, 200, duration, tokens, tokens)


async def test_the_store_keeps_the_newest_rows_up_to_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    history = History(path, max_rows=5, retention_days=1)
    await history.open()
    now = time.time()
    history.add(record(now - 3 * 86400))  # older than the retention
    for i in range(8):
        history.add(record(now + i, duration=float(i)))
    await history.aclose()
    again = History(path)
    await again.open()
    assert [r["duration_ms"] for r in again.recent()] == [7.0, 6.0, 5.0, 4.0, 3.0]
    await again.aclose()


def test_usage_is_read_from_the_end_of_an_answer() -> None:
    stream_tail = (b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}\n\n'
                   b"data: [DONE]\n\n")
    assert usage_from_bytes(stream_tail) == (12, 34)
    assert usage_from_bytes(b'{"choices":[{"message":{"content":"no usage here"}}]}') == (None, None)


def test_summarise_buckets_by_minute_backend_and_day() -> None:
    now = 1_800_000_000.0
    rows = [record(now, "echo", 10, 5), record(now, "echo", 30, 1), record(now - 120, "llmtune", 100, 2),
            record(now - 7200, "llmtune", 5, 7)]  # two hours ago: counted in tokens, not in the hour
    stats = summarise(rows, now, minutes=60, days=2)
    assert stats["requests_per_minute"]["echo"][-1] == 2
    assert stats["latency_ms"]["echo"][-1] == 20.0
    assert stats["requests_per_minute"]["llmtune"][-3] == 1
    assert sum(stats["requests_per_minute"]["llmtune"]) == 1
    assert sum(day["prompt"] for day in stats["tokens_per_day"]) == 15
