"""The pure parts: SSE inspection, cost shares, routing order, buckets, budgets, WAL replay."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import itertools
import json
import logging
import os
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.errors import InvalidInput, RateLimited
from scheduler.gateway.core import _int, _parse_body
from scheduler.gateway.limits import Admission, BudgetLedger, TokenBucket
from scheduler.gateway.load import ReplicaLoad, cost_yuan
from scheduler.gateway.metering import UsageWriter, decode, encode
from scheduler.gateway.replicas import ReplicaEndpoint
from scheduler.gateway.routing import POLICIES, RoutingSnapshot
from scheduler.gateway.schemas import ChatCompletionRequest, CompletionRequest, plainly_valid
from scheduler.gateway.sse import StreamTally, inspect_block, model_rewriter, usage_of_body
from scheduler.store.tenancy import session_factory
from scheduler.tenancy import TenancyService, TenantLimits, UsageRecord


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


STREAM = (
    _event({"model": "eng", "choices": [{"delta": {"role": "assistant", "content": ""}}]})
    + b"".join(
        _event({"model": "eng", "choices": [{"delta": {"content": f"t{i}"}}]}) for i in range(5)
    )
    + _event({"model": "eng", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    + b"data: [DONE]\n\n"
)


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_inspect_block_any_fragmentation(cuts: list[int]) -> None:
    bounds = [0, *sorted(set(cuts)), len(STREAM)]
    for forward_usage in (True, False):
        tally = StreamTally()
        rename = model_rewriter("eng", "public")
        out = b"".join(
            inspect_block(STREAM[a:b], tally, forward_usage=forward_usage, rename=rename)
            for a, b in itertools.pairwise(bounds)
        )
        assert tally.done and tally.content_events == 5 and tally.pending == b""
        assert tally.usage == {"prompt_tokens": 3, "completion_tokens": 5}
        assert b'"eng"' not in out and out.count(b'"model": "public"') == (
            7 if forward_usage else 6
        )
        assert (b'"usage"' in out) is forward_usage
        assert out.endswith(b"data: [DONE]\n\n")


def test_usage_of_body_reads_only_top_level_usage() -> None:
    body = json.dumps(
        {"choices": [{"message": {"content": 'say "usage": {1}'}}], "usage": {"prompt_tokens": 2}}
    ).encode()
    assert usage_of_body(body) == {"prompt_tokens": 2}
    assert usage_of_body(b'{"choices": []}') is None
    assert usage_of_body(b'{"usage": 3}') is None and usage_of_body(b"[1]") is None
    # not UTF-8 (orjson refuses it): the last top-level "usage" is still found
    latin = b'{"choices": [{"text": "caf\xe9"}], "usage": {"prompt_tokens": 4}}'
    assert usage_of_body(latin) == {"prompt_tokens": 4}
    assert usage_of_body(b"not json") is None


def test_token_counts_from_engines_are_plain_non_negative_64_bit_ints() -> None:
    assert [_int(v) for v in (0, 7, 2**63 - 1, 2**63, 2**64, -1, 1.5, "3", None, True)] == [
        0, 7, 2**63 - 1, 0, 0, 0, 0, 0, 0, 1,
    ]  # fmt: skip


def test_request_bodies_orjson_refuses_parse_as_before() -> None:
    """UTF-16 and NaN bodies: json takes them (orjson does not), so they still parse."""
    body = {"model": "m", "prompt": "x", "temperature": 0.5}
    assert _parse_body(json.dumps(body).encode("utf-16"), "/v1/completions") == body
    assert (
        _parse_body(b'{"model": "m", "prompt": "x", "x": NaN}', "/v1/completions")["model"] == "m"
    )
    with pytest.raises(InvalidInput, match="Malformed JSON body"):
        _parse_body(b'{"model": ', "/v1/completions")


def test_busy_share_splits_replica_time_between_overlapping_requests() -> None:
    load = ReplicaLoad()
    a = load.start("r", 0.0)
    b = load.start("r", 1.0)  # overlaps a during [1, 2]
    share_a = load.finish(a, 2.0)
    share_b = load.finish(b, 4.0)
    assert share_a == pytest.approx(1.0 + 0.5)
    assert share_b == pytest.approx(0.5 + 2.0)
    assert share_a + share_b == pytest.approx(4.0)  # exactly the busy time, billed once
    assert cost_yuan(3600.0, share_a) == pytest.approx(1.5)


def _r(rid: str, yuan: float) -> ReplicaEndpoint:
    return ReplicaEndpoint(rid, "m", "m", "http://x", "bf16", "c", "s", yuan, "ready")


def test_least_outstanding_then_cheaper_then_rotation() -> None:
    policy = POLICIES["least_outstanding"]()
    a, b, c = _r("a", 2.0), _r("b", 1.0), _r("c", 1.0)
    snap = RoutingSnapshot("m", (a, b, c), {"a": 0, "b": 1, "c": 1})
    assert policy.order(snap)[0] is a
    snap = RoutingSnapshot("m", (a, b, c), {"a": 1, "b": 1, "c": 1}, sequence=0)
    first = {
        policy.order(RoutingSnapshot("m", (a, b, c), snap.outstanding, s))[0].id for s in range(4)
    }
    assert first == {"b", "c"}  # equal cost and load: rotate, never the dearer one
    assert policy.order(RoutingSnapshot("m", (), {})) == ()


def test_token_bucket_and_admission_limits() -> None:
    bucket = TokenBucket(rate_per_s=2.0, capacity=2.0, now_s=0.0)
    bucket.take(2.0, 0.0)
    assert bucket.wait_s(1.0, 0.0) == pytest.approx(0.5)
    assert bucket.wait_s(1.0, 0.5) == 0.0

    now = [0.0]
    admission = Admission(lambda: now[0], lambda: datetime(2026, 1, 31, 23, 0, tzinfo=UTC))
    from scheduler.tenancy import Tenant

    tenant = Tenant(1, "t", ("*",), TenantLimits(tokens_per_min=60), False, datetime.now(UTC))
    permit = admission.admit(tenant)
    admission.release(permit, tokens=120)  # one big request: 60 tokens in debt
    with pytest.raises(RateLimited) as err:
        admission.admit(tenant)
    assert err.value.retry_after_s == pytest.approx(60.0)
    now[0] = 61.0
    admission.admit(tenant)


def test_budget_ledger_rolls_over_and_reports_reset_time() -> None:
    t0 = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
    ledger = BudgetLedger(day=t0.replace(hour=0), month=t0.replace(day=1, hour=0))
    ledger.add(t0, 100, 0.5)
    limits = TenantLimits(daily_token_budget=100, monthly_yuan_budget=1.0)
    name, reset_s = ledger.exhausted(limits, t0) or ("", 0.0)
    assert name == "daily token" and reset_s == pytest.approx(3600.0)
    ledger.roll(t0 + timedelta(hours=2))  # a new day and a new month
    assert ledger.exhausted(limits, t0 + timedelta(hours=2)) is None
    assert ledger.month_yuan == 0.0


def _record(i: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"req-{i}",
        tenant_id=1,
        key_id="k",
        model="m",
        status=200,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        completion_tokens=i,
    )


def test_wal_replay_after_crash_inserts_once(tmp_path: Path) -> None:
    tenancy = TenancyService(
        session_factory(f"sqlite:///{tmp_path / 'db.sqlite'}", create_tables=True)
    )
    tenancy.create_tenant("t")

    async def crash_after_submit() -> None:
        writer = UsageWriter(tenancy, tmp_path / "wal", flush_interval_s=60)
        writer.open()
        for i in range(5):
            writer.submit(_record(i))
        tenancy.record_usage([_record(0), _record(1)])  # as if a flush landed before the crash
        _crash(writer)

    asyncio.run(crash_after_submit())
    again = UsageWriter(tenancy, tmp_path / "wal")
    assert again.open() == 5  # left on disk, taken as backlog: open() stores nothing
    assert again.backlog == again.pending == 5
    assert tenancy.usage_summary("t", datetime(2025, 1, 1, tzinfo=UTC)).by_model[0].requests == 2
    asyncio.run(again.stop())  # the flushes store it (here: stop's)
    assert again.backlog == 0
    summary = tenancy.usage_summary("t", datetime(2025, 1, 1, tzinfo=UTC))
    assert summary.by_model[0].requests == 5
    assert summary.by_model[0].completion_tokens == sum(range(5))


def _store_leftovers(sink: Any, wal: Path) -> int:
    """A new writer on ``wal``: how many records open() found there, stored as backlog by the
    writer's flushes (here: stop's)."""
    writer = UsageWriter(sink, wal)
    found = writer.open()
    asyncio.run(writer.stop())
    assert writer.pending == 0
    return found


def _crash(writer: UsageWriter) -> None:
    """The process "dies" without stop(): the kernel releases its flock."""
    assert writer._lock_fd is not None
    os.close(writer._lock_fd)


def test_wal_segments_are_reserved_mapped_and_cut_if_they_outlive_a_flush(
    tmp_path: Path,
) -> None:
    sink = FlakySink(failures=1)
    line = len(encode(_record(0)))
    size = 2 * line + line // 2
    writer = UsageWriter(sink, tmp_path / "wal", segment_bytes=size)
    writer.open()
    for i in range(5):  # two records fill a segment: three segments
        writer.submit(_record(i))
    segments = sorted((tmp_path / "wal").glob("usage-*.wal"))
    assert [p.stat().st_size for p in segments] == [size] * 3  # reserved up front
    assert segments[0].read_bytes() == encode(_record(0)) + encode(_record(1)) + b"\0" * (line // 2)
    assert segments[-1].read_bytes() == encode(_record(4)) + b"\0" * (line + line // 2)
    asyncio.run(writer.flush())  # the database is down: the segments stay
    assert sink.stored == {} and writer.failed_flushes == 1
    # the one the flush closed is cut to its record; the full ones keep their short tails
    assert [p.stat().st_size for p in segments] == [size, size, line]
    _crash(writer)
    again = UsageWriter(sink, tmp_path / "wal")
    assert again.open() == 5  # the reserved NUL tails are not records
    asyncio.run(again.flush())
    assert again.backlog == 0
    assert sorted(sink.stored) == [f"req-{i}" for i in range(5)]
    assert len(list((tmp_path / "wal").glob("usage-*.wal"))) == 1  # the rest: replayed, deleted
    writer = UsageWriter(sink, tmp_path / "wal2", segment_bytes=size)
    writer.open()
    writer.submit(_record(7))
    asyncio.run(writer.flush())  # stored: the segment is deleted, not cut
    assert [p.stat().st_size for p in (tmp_path / "wal2").glob("usage-*.wal")] == [size]
    assert "req-7" in sink.stored


@pytest.mark.parametrize("failure", [errno.EOPNOTSUPP, errno.ENOSPC])
def test_wal_appends_with_write_where_space_cannot_be_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: int
) -> None:
    def refuse(fd: int, offset: int, size: int) -> None:
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    sink = FlakySink(failures=0)
    writer = UsageWriter(sink, tmp_path / "wal")
    writer.open()
    writer.submit(_record(1))
    (segment,) = (tmp_path / "wal").glob("usage-*.wal")
    assert segment.read_bytes() == encode(_record(1))  # appended, nothing reserved
    assert "cannot reserve" in caplog.text
    monkeypatch.undo()
    asyncio.run(writer.flush())  # the next segment: a full disk may have cleared, else not
    writer.submit(_record(2))
    newest = max((tmp_path / "wal").glob("usage-*.wal"))
    assert newest.stat().st_size == (
        len(encode(_record(2))) if failure != errno.ENOSPC else 1 << 20
    )
    _crash(writer)
    assert _store_leftovers(sink, tmp_path / "wal") == 1
    assert sorted(sink.stored) == ["req-1", "req-2"]


def test_a_segment_that_cannot_be_opened_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors when a segment should open (a flush's rotation, or a full
    segment): records go on in the current segment, and the next flush stores them all."""
    sink = FlakySink(failures=0)
    line = len(encode(_record(0)))
    writer = UsageWriter(sink, tmp_path / "wal", segment_bytes=2 * line)
    writer.open()
    real_open = os.open

    def no_fds(path: Any, *args: Any) -> int:
        if "usage-" in str(path):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *args)

    writer.submit(_record(0))
    monkeypatch.setattr(os, "open", no_fds)
    asyncio.run(writer.flush())  # cannot rotate: nothing taken out of the queue
    assert writer.pending == 1 and sink.stored == {}
    for i in range(1, 4):  # the segment fills at 2: the rest appended to it with write(2)
        writer.submit(_record(i))
    (segment,) = (tmp_path / "wal").glob("usage-*.wal")
    assert segment.read_bytes() == b"".join(encode(_record(i)) for i in range(4))
    monkeypatch.undo()
    asyncio.run(writer.flush())
    assert sorted(sink.stored) == [f"req-{i}" for i in range(4)]
    assert not segment.exists()  # stored, so deleted


def test_replay_skips_a_page_lost_in_the_middle_of_a_segment(tmp_path: Path) -> None:
    """A power loss can leave a mapped segment with NULs where a page was not written back,
    and records after it that were: those are replayed."""
    (tmp_path / "wal").mkdir()
    lines = [encode(_record(i)) for i in range(3)]
    hole = b"\0" * len(lines[1])
    (tmp_path / "wal" / "usage-000000000001.wal").write_bytes(
        lines[0] + hole + lines[2] + b"\0" * 100
    )
    sink = FlakySink(failures=0)
    assert _store_leftovers(sink, tmp_path / "wal") == 2  # by line ends: two
    assert sorted(sink.stored) == ["req-0", "req-2"]


def test_unmapped_wal_appends_with_write(tmp_path: Path) -> None:
    writer = UsageWriter(FlakySink(failures=0), tmp_path / "wal", mapped=False)
    writer.open()
    writer.submit(_record(1))
    writer.submit(_record(2))
    (segment,) = (tmp_path / "wal").glob("usage-*.wal")
    assert segment.read_bytes() == encode(_record(1)) + encode(_record(2))


class FlakySink:
    """A usage sink whose database is down for the first ``failures`` flushes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.stored: dict[str, UsageRecord] = {}

    def record_usage(self, records: list[UsageRecord]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise OSError("database is down")
        new = [r for r in records if r.request_id not in self.stored]
        self.stored.update((r.request_id, r) for r in new)
        return len(new)


def test_writer_keeps_records_in_the_wal_while_the_database_is_down(tmp_path: Path) -> None:
    sink = FlakySink(failures=2)

    async def run() -> None:
        writer = UsageWriter(sink, tmp_path / "wal", flush_interval_s=0.01)
        writer.open()
        await writer.start()
        for i in range(10):
            writer.submit(_record(i))
        for _ in range(200):
            if len(sink.stored) == 10:
                break
            await asyncio.sleep(0.01)
        await writer.stop()

    asyncio.run(run())
    assert sorted(sink.stored) == sorted(f"req-{i}" for i in range(10))
    assert not [p for p in (tmp_path / "wal").glob("usage-*.wal") if p.stat().st_size]


def test_records_of_failed_flushes_wait_on_disk_not_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage of the database holds the gateway's memory to the records since the last
    try: each failed flush leaves its records in the WAL only; the next good one stores
    them all, once."""
    # pytest's log capture keeps each failure's traceback, and with it the failed batch
    monkeypatch.setattr(logging.getLogger("scheduler.gateway.metering"), "propagate", False)
    sink = FlakySink(failures=5)
    per_flush = 4_000

    async def run() -> None:
        writer = UsageWriter(sink, tmp_path / "wal")
        writer.open()
        tracemalloc.start()
        try:
            held = tracemalloc.get_traced_memory()[0]
            for start in range(0, 5 * per_flush, per_flush):
                for i in range(start, start + per_flush):
                    writer.submit(_record(i))
                await writer.flush()  # the database is down
            grown = tracemalloc.get_traced_memory()[0] - held
        finally:
            tracemalloc.stop()
        assert writer.failed_flushes == 5 and sink.stored == {}
        assert writer.pending == 5 * per_flush  # counted, not held
        # held in memory, these 20,000 records took 8.6 MB; on disk only, 0.15 MB
        assert grown < 2_000_000, grown
        writer.submit(_record(10**6))
        await writer.flush()  # back: the backlog, then the queue
        assert writer.pending == 0
        await writer.stop()

    asyncio.run(run())
    assert sorted(sink.stored) == sorted(
        [f"req-{i}" for i in range(5 * per_flush)] + ["req-1000000"]
    )
    assert not [p for p in (tmp_path / "wal").glob("usage-*.wal") if p.stat().st_size]


async def _fail_three_flushes(writer: UsageWriter) -> None:
    """Records req-0..req-11, four per flush, each flush failing (the sink's first three)."""
    for batch in range(3):
        for i in range(4):
            writer.submit(_record(batch * 4 + i))
        await writer.flush()


def test_backlog_is_stored_a_slice_at_a_time_and_survives_a_restart(tmp_path: Path) -> None:
    sink = FlakySink(failures=3)

    async def run() -> None:
        writer = UsageWriter(sink, tmp_path / "wal", backlog_per_flush=5)
        writer.open()
        await _fail_three_flushes(writer)  # three segments of four records
        assert writer.pending == 12
        writer.submit(_record(12))
        writer.submit(_record(13))
        await writer.flush()  # whole segments until 5 records: two of them, then the queue
        assert sorted(sink.stored) == sorted(f"req-{i}" for i in [*range(8), 12, 13])
        assert writer.pending == 4
        _crash(writer)  # the rest is on disk only: the next process's backlog

    asyncio.run(run())
    assert _store_leftovers(sink, tmp_path / "wal") == 4
    assert sorted(sink.stored) == sorted(f"req-{i}" for i in range(14))


def test_a_whole_backlog_flush_goes_a_share_at_a_time(tmp_path: Path) -> None:
    """flush(whole_backlog=True) stores all of the backlog, a share at a time, with the
    records queued meanwhile; if the database goes again, it stops and the rest waits."""
    sink = FlakySink(failures=3)
    calls: list[int] = []
    store = sink.record_usage
    sink.record_usage = lambda records: calls.append(len(records)) or store(records)  # type: ignore[method-assign]

    async def run() -> None:
        writer = UsageWriter(sink, tmp_path / "wal", backlog_per_flush=5)
        writer.open()
        await _fail_three_flushes(writer)  # three segments of four records
        calls.clear()
        writer.submit(_record(12))
        await writer.flush(whole_backlog=True)
        assert writer.pending == 0 and writer.backlog == 0
        assert calls == [8, 1, 4]  # two segments and the queue, then the third segment
        for i in range(13, 17):
            writer.submit(_record(i))
        sink.failures = 1
        await writer.flush()  # down again: four more on disk
        sink.failures = 1  # fails the first share
        await writer.flush(whole_backlog=True)
        assert writer.backlog == 4 and writer.failed_flushes == 5
        await writer.stop()

    asyncio.run(run())
    assert sorted(sink.stored) == sorted(f"req-{i}" for i in range(17))


class SlowFlakySink(FlakySink):
    def record_usage(self, records: list[UsageRecord]) -> int:
        time.sleep(0.2)
        return super().record_usage(records)


@pytest.mark.parametrize("cancels", [1, 2])
def test_a_cancelled_flush_settles_its_batch_before_giving_up(tmp_path: Path, cancels: int) -> None:
    """A flush cancelled while its thread inserts (e.g. a usage query's, at shutdown): the
    thread goes on, and its batch is settled (here: failed, so kept as backlog) before the
    cancellation goes on; the next flush does not delete the segment that holds it.
    Cancelled again while it waits for its thread, a flush still waits, with the lock held,
    and settles the batch before giving up: nothing is lost."""
    sink = SlowFlakySink(failures=1)

    async def run() -> None:
        writer = UsageWriter(sink, tmp_path / "wal")
        writer.open()
        writer.submit(_record(0))
        flush = asyncio.create_task(writer.flush())
        await asyncio.sleep(0.05)
        assert writer.pending == 1  # being stored still counts
        for _ in range(cancels):
            flush.cancel()
            await asyncio.sleep(0.05)
        with pytest.raises(asyncio.CancelledError):
            await flush
        assert writer.backlog == 1 and writer.failed_flushes == 1
        writer.submit(_record(1))
        await writer.flush()
        await writer.stop()

    asyncio.run(run())
    assert sorted(sink.stored) == ["req-0", "req-1"]


def test_a_whole_backlog_flush_stops_at_its_time_limit(tmp_path: Path) -> None:
    """A flush whose time ran out (here: at once, as for one that waited that long for the
    lock) stores the queue and none of the backlog; so does a stop; what is left waits in
    the WAL for the next process."""
    sink = FlakySink(failures=3)

    async def run() -> None:
        writer = UsageWriter(sink, tmp_path / "wal", backlog_per_flush=4)
        writer.open()
        await _fail_three_flushes(writer)  # three segments of four records
        writer.submit(_record(12))
        await writer.flush(whole_backlog=True, within_s=0.0)
        assert writer.backlog == 12 and list(sink.stored) == ["req-12"]
        await writer.flush(whole_backlog=True, within_s=60.0)  # one share, then the rest
        assert writer.backlog == 0 and len(sink.stored) == 13
        sink.failures = 1
        writer.submit(_record(13))
        await writer.flush()
        assert writer.backlog == 1
        await writer.stop(within_s=0.0)
        assert writer.backlog == 1

    asyncio.run(run())
    assert _store_leftovers(sink, tmp_path / "wal") == 1
    assert len(sink.stored) == 14


def test_leftover_count_includes_a_record_whose_line_end_was_cut(tmp_path: Path) -> None:
    """A kill between a record's bytes and its line end: the record still reads, so it counts
    (and its segment is not taken for empty and deleted)."""
    (tmp_path / "wal").mkdir()
    (tmp_path / "wal" / "usage-000000000001.wal").write_bytes(encode(_record(0))[:-1] + b"\0" * 64)
    sink = FlakySink(failures=0)
    assert _store_leftovers(sink, tmp_path / "wal") == 1
    assert list(sink.stored) == ["req-0"]


def test_wal_lines_round_trip_and_older_object_lines_still_replay() -> None:
    record = dataclasses.replace(
        _record(3), model='we"ird\nmodel', ttft_ms=12.5, stream=True, key_id=None
    )
    assert decode(encode(record)) == record
    legacy = {**vars(record), "created_at": record.created_at.isoformat(), "retired": 1}
    assert decode(json.dumps(legacy).encode()) == record  # unknown keys are ignored
    assert decode(encode(record)[:-9]) is None  # a torn write
    assert decode(b"[1,2,3]") is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 20) | st.floats(-1, 3) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "", 1]),
        "content": st.none() | st.text(max_size=3) | st.lists(_JSON, max_size=2) | st.integers(),
    },
)
# each field's pool mixes valid values with near misses (coercible, out of range, wrong type)
_FIELDS = {
    "model": st.sampled_from(["m", "", 7, "x" * 257, None]),
    "stream": st.sampled_from([True, False, None, "true", 1]),
    "stream_options": st.none()
    | _JSON
    | st.fixed_dictionaries(
        {}, optional={"include_usage": st.sampled_from([True, False, "yes", None])}
    ),
    "max_tokens": st.sampled_from([None, 0, 1, 5, 2.0, True, "3"]),
    "n": st.sampled_from([None, 0, 1, 16, 17, 2.0]),
    "temperature": st.sampled_from([None, 0, 2, 2.5, -0.1, 1.0, "1", float("nan")]),
    "top_p": st.sampled_from([None, 0, 0.5, 1, 1.5, True]),
    "messages": st.lists(_MESSAGE | _JSON, max_size=3) | _JSON,
    "max_completion_tokens": st.sampled_from([None, 0, 4, 4.0]),
    "prompt": _JSON | st.lists(st.lists(st.integers(0, 9) | st.booleans(), max_size=2), max_size=2),
    "top_k": _JSON,
}
_VALID = {"model": "m", "prompt": "p", "messages": [{"role": "user", "content": "hi"}]}


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with a few fields replaced from the pools above (or dropped)."""
    body: dict[str, Any] = dict(_VALID)
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=3, unique=True)):
        if draw(st.booleans()):
            body[name] = draw(_FIELDS[name])
        else:
            body.pop(name, None)
    return body


@given(body=_bodies(), chat=st.booleans())
def test_plainly_valid_accepts_only_what_the_schema_accepts(
    body: dict[str, Any], chat: bool
) -> None:
    schema = ChatCompletionRequest if chat else CompletionRequest
    if plainly_valid(body, chat=chat):
        schema.model_validate(body)  # never raises: the fast path is a subset


def test_plainly_valid_takes_what_openai_clients_send() -> None:
    chat = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 8,
        "temperature": 0.7,
        "top_p": 1,
        "seed": 3,
    }
    assert plainly_valid(chat, chat=True)
    assert plainly_valid({"model": "m", "prompt": [[1, 2], [3]], "n": 2}, chat=False)
    assert not plainly_valid({"model": "m", "prompt": "x", "stream": "true"}, chat=False)
