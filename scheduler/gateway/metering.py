"""Durable, batched usage recording: a write-ahead file queue in front of the database.

Contract: ``submit(record)`` returns only after the record is appended to the current WAL
segment (optionally synced to disk), and the gateway calls it *before* the last byte of the
response is sent. A segment is a file with its space reserved up front (``fallocate``) and
mapped into memory (``mmap``, shared): appending a record is a copy into the page cache,
which outlives the process like a ``write(2)`` does, without the system call (3-4 us per
request); where the file system cannot reserve space (a store into a mapped hole on a full
disk would kill the process with SIGBUS), segments are appended with ``write(2)``. A
segment outliving a failed flush is cut to its records' length, so reserved space does not
pile up while the database is down. A background task moves records to the database in
batches: it rotates to a new segment, inserts everything queued (records of older segments
only), and then deletes the segments that held them, once a second by default (or as soon
as ``batch_max`` records wait). A flush is a thread holding the GIL for SQLAlchemy plus a
database commit: run once per request (as at a 50 ms interval at low request rates) it
landed inside most requests' time to first token and added ~14 ms to it (bench/runtime.py,
issue 5); once a second it is one batch whatever the rate.

While the database is down, a failed flush's records stay in their segments only (the
backlog): memory holds the records since the last try and those of the try under way,
however long the outage (bench/usage_outage.py). Later flushes store the backlog first,
oldest segments first, in inserts of whole segments: a periodic flush stores segments until
it has stored ``backlog_per_flush`` records, so the catch-up takes a share of the CPU, not
all of it; ``flush(whole_backlog=True)`` (the usage endpoints, a budget ledger's first
load, ``stop()``) stores all of it, so that what they read next is complete, in the same
shares, each with the records queued meanwhile.
At startup ``open()`` takes the segments a previous process left (a crash, or a stop while
the database was down) as backlog, counting their lines, and the flushes store them as they
store any backlog, while the gateway serves: a gateway back after a long outage listens in
seconds, not after minutes of inserts (what reads usage or loads a budget stores them first,
as above: for up to 5 s, then the gateway answers 503 usage_not_stored until they are in).
Inserts skip request ids already stored (unique column), so a crash between insert and
delete never duplicates a record, and a SIGKILL never loses one whose response completed
(the page cache survives the process; ``fsync=True`` covers power loss). A segment's
unused tail reads as NUL bytes, which reading a segment skips (a JSON line never holds
one), as it skips a page of them that the kernel had not written back when the machine
went down. ``mapped=False`` (``CUNLIANG_GATEWAY_WAL_MMAP=false``) appends with
``write(2)`` everywhere: for file systems whose ``fallocate`` reserves nothing (ZFS, NFS),
where a full disk would surface at write-back rather than in ``submit``.

One gateway process per WAL directory (enforced with an flock).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import mmap
import os
import time
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Protocol

import orjson

from scheduler.errors import ConfigError
from scheduler.tenancy import UsageRecord

log = logging.getLogger(__name__)

_SEGMENT_GLOB = "usage-*.wal"
# a mapped segment's reserved size (~4,000 records; a full one makes way for the next)
SEGMENT_BYTES = 1 << 20
_DRAIN_CHUNK = 20_000  # records per insert when the backlog is stored
_FIELDS = {f.name for f in fields(UsageRecord)}


class UsageSink(Protocol):
    def record_usage(self, records: Sequence[UsageRecord]) -> int: ...


# a WAL line is a JSON array of the record's fields in this order (a third of the CPU of a
# JSON object with keys); lines written as objects by older gateways still read
_ORDER = tuple(f.name for f in fields(UsageRecord))


def encode(record: UsageRecord) -> bytes:
    """One WAL line. orjson writes ``created_at`` as ``isoformat()`` does, in a tenth of the
    standard library encoder's CPU (0.4 vs 4.2 us per record)."""
    values = list(vars(record).values())  # a dataclass's __dict__ keeps the field order
    return orjson.dumps(values, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> UsageRecord | None:
    """A record from one WAL line, or None for a torn/garbled line (a write cut by power loss)."""
    try:
        value = json.loads(line)
        if isinstance(value, list):
            if len(value) != len(_ORDER):
                return None
            data = dict(zip(_ORDER, value, strict=True))
        else:
            data = {k: v for k, v in value.items() if k in _FIELDS}
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return UsageRecord(**data)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _segment_seq(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


class UsageWriter:
    def __init__(
        self,
        sink: UsageSink,
        wal_dir: Path,
        *,
        batch_max: int = 512,
        flush_interval_s: float = 1.0,
        fsync: bool = False,
        segment_bytes: int = SEGMENT_BYTES,
        mapped: bool = True,
        backlog_per_flush: int = 20_000,
    ) -> None:
        if backlog_per_flush < 1:
            raise ValueError("backlog_per_flush must be at least 1")
        self._sink = sink
        self._dir = wal_dir
        self._batch_max = batch_max
        self._interval_s = flush_interval_s
        self._fsync = fsync
        self._pending: list[UsageRecord] = []
        # segments <= _backlog_upto hold records of failed flushes, on disk only (0: none)
        self._backlog_upto = 0
        self._backlog = 0  # how many records they hold
        self._backlog_per_flush = backlog_per_flush
        self._in_flight = 0  # records of the batch a flush is storing now
        self.last_stored_s = time.time()  # when records were last stored (or open)
        self._fd: int | None = None
        self._segment_bytes = segment_bytes
        self._path: Path | None = None  # the current segment
        self._map: mmap.mmap | None = None  # the current segment, mapped (None: write(2))
        self._used = 0  # bytes of records in the current segment
        self._mapping = mapped  # False: write(2); also once the file system cannot reserve
        self._seq = 0
        self._lock_fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self.failed_flushes = 0

    # ---- lifecycle ---------------------------------------------------------------------

    def open(self) -> int:
        """Lock the directory, take the segments a previous process left as backlog (stored
        by the flushes that follow, oldest first), open a fresh segment. Returns how many
        records those segments hold (blocking: it reads them; call before serving)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self._dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(
                f"Usage WAL directory {self._dir} is in use by another gateway.",
                fix="give each gateway process its own data dir.",
            ) from exc
        found = self._adopt_leftovers()
        self._open_segment()
        self.last_stored_s = time.time()
        return found

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def stop(self, *, within_s: float | None = None) -> None:
        """Flush everything, or what ``within_s`` seconds allow (the rest stays in the WAL
        for the next process), and close (graceful shutdown)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush(whole_backlog=True, within_s=within_s)
        reserved = self._reserved()
        self._close_segment()
        if reserved is not None:
            os.truncate(*reserved)  # to its records (none, unless the flush failed)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- hot path ----------------------------------------------------------------------

    def submit(self, record: UsageRecord) -> None:
        """Append to the WAL (durable against a process kill when this returns) and queue."""
        if self._fd is None:
            raise RuntimeError("UsageWriter.submit before open()")
        line = encode(record)
        if self._map is not None and self._used + len(line) > len(self._map):
            try:
                self._open_segment(len(line))  # full: records go on in the next segment
            except OSError:  # e.g. out of file descriptors: go on in this one, unmapped
                log.exception("usage WAL: opening the next segment failed")
                self._unmap()
        mapped = self._map
        if mapped is None:
            os.write(self._fd, line)
            if self._fsync:
                os.fsync(self._fd)
        else:
            start = self._used
            self._used = end = start + len(line)
            mapped[start:end] = line
            if self._fsync:
                mapped.flush()
        self._pending.append(record)
        if len(self._pending) >= self._batch_max:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Records not stored in the database yet: queued, being stored, and left on disk
        by failed flushes (or a previous process)."""
        return len(self._pending) + self._in_flight + self.backlog

    def volume(self) -> tuple[int, int] | None:
        """(size, bytes available to this process) of the WAL's file system; None if it
        cannot be read."""
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return None
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    @property
    def backlog(self) -> int:
        """Records that failed flushes (or a previous process) left on disk and no flush has
        stored yet: at least 1 while any such segment is left, whatever the count says."""
        if not self._backlog_upto:
            return 0
        return max(self._backlog, 1)

    # ---- background --------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # kept in the WAL for the next flush
                log.exception("usage flush failed")

    async def flush(self, *, whole_backlog: bool = False, within_s: float | None = None) -> None:
        """Move queued records to the database now, after the backlog of failed flushes
        (whole segments until ``backlog_per_flush`` records are stored; with
        ``whole_backlog``, all of it, or as much as ``within_s`` seconds allow, counted
        from the call: a flush that waited that long for the lock stores the queue only).
        Serialised:
        segments are deleted only after every record in them is stored. Failures are
        logged and counted (``failed_flushes``), not raised: the records wait in the WAL."""
        deadline = None if within_s is None else time.monotonic() + within_s
        async with self._flush_lock:
            failed = self.failed_flushes
            # waited out its time for the lock (other flushes storing the backlog): the queue
            # only, none of the backlog
            late = deadline is not None and time.monotonic() >= deadline
            await self._flush_locked(0 if late else self._backlog_per_flush)
            # the rest of the backlog a share at a time, each time with the records queued
            # meanwhile (memory holds one share's time of traffic, not the whole catch-up's),
            # until a share fails: then the rest waits for the next flush
            while whole_backlog and self._backlog_upto and self.failed_flushes == failed:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                await self._flush_locked(self._backlog_per_flush)

    async def _flush_locked(self, backlog_limit: int | None) -> None:
        if not self._pending and not self._backlog_upto:
            return
        done_upto = self._backlog_upto  # nothing queued: the backlog only
        closing = None
        if self._pending:
            # records queued so far all live in segments <= current; new ones go to the next
            done_upto = self._seq
            closing = self._reserved()
            try:
                self._open_segment()
            except OSError:  # e.g. out of file descriptors: records go on in the current one
                self.failed_flushes += 1
                log.exception("usage WAL: opening the next segment failed; flushing later")
                await asyncio.sleep(min(5.0, 0.1 * self.failed_flushes))
                return
        batch, self._pending = self._pending, []
        self._in_flight = len(batch)
        store = asyncio.ensure_future(
            asyncio.to_thread(self._store, batch, done_upto, closing, backlog_limit)
        )
        # settled (stored, or backlog) as the thread ends, however this task fares
        store.add_done_callback(functools.partial(self._settle, len(batch), done_upto))
        del batch  # the thread's (a failed one's stays on disk only)
        cancelled = False
        while not store.done():
            try:
                # not raising the thread's exception here: a traceback through this frame
                # would hold the batch until the garbage collector finds the cycle
                await asyncio.wait([store])
            except asyncio.CancelledError:
                # the thread goes on: keep the lock (a flush meanwhile would delete the
                # batch's segments) until it ends and its batch is settled, then give up
                cancelled = True
        await asyncio.sleep(0)  # the done callback runs
        if cancelled:
            raise asyncio.CancelledError
        stored = not store.cancelled() and store.exception() is None
        del store  # its exception's traceback holds the batch: not during the back-off
        if not stored:
            await asyncio.sleep(min(5.0, 0.1 * self.failed_flushes))

    def _settle(self, records: int, done_upto: int, store: asyncio.Future[bool]) -> None:
        """Account for a finished store of ``records`` queued records in segments up to
        ``done_upto`` (a done callback)."""
        self._in_flight = 0
        exc = None if store.cancelled() else store.exception()
        if store.cancelled() or exc is not None:
            # the database is down or locked (or the result was lost): the records stay in
            # the WAL, on disk only: memory stays bounded however long the outage
            self.failed_flushes += 1
            log.error("usage flush of %d records failed; kept in the WAL", records, exc_info=exc)
            self._backlog_upto = max(self._backlog_upto, done_upto)
            self._backlog += records
            return
        if store.result():  # no backlog left
            self._backlog_upto = self._backlog = 0
        self.last_stored_s = time.time()

    def _store(
        self,
        batch: list[UsageRecord],
        upto: int,
        closing: tuple[Path, int] | None,
        backlog_limit: int | None,
    ) -> bool:
        """The flush thread: store the backlog (whole segments until ``backlog_limit``
        records, None: all), then insert the batch and delete the segments that held it (file
        operations off the event loop: freeing a segment's blocks takes the file system's
        locks). A segment that outlives a failed insert is cut to its records (``closing``:
        the one just closed, with space reserved past them). True when no backlog is left."""
        try:
            drained = True
            if self._backlog_upto:
                drained = self._drain(self._backlog_upto, backlog_limit)[2]
            if batch:
                self._sink.record_usage(batch)
        except BaseException:
            if closing is not None:
                with contextlib.suppress(OSError):
                    os.truncate(*closing)
            raise
        self._delete_segments(upto=upto, after=self._backlog_upto)
        return drained

    # ---- files -------------------------------------------------------------------------

    def _segments(self) -> list[Path]:
        return sorted(self._dir.glob(_SEGMENT_GLOB), key=_segment_seq)

    def _open_segment(self, min_bytes: int = 0) -> None:
        """Open the next segment, then make it current and close the one before (rotation,
        or the current one full: its tail, shorter than a record, stays reserved until the
        segment is deleted). Raises OSError, with the current segment still in use, if the
        next one cannot be opened."""
        seq = self._seq + 1
        path = self._dir / f"usage-{seq:012d}.wal"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        mapped: mmap.mmap | None = None
        try:
            if self._mapping:
                size = max(self._segment_bytes, min_bytes)
                try:
                    os.posix_fallocate(fd, 0, size)
                    mapped = mmap.mmap(fd, size)
                except OSError as exc:
                    os.ftruncate(fd, 0)
                    # a full disk may clear; a file system that cannot reserve space will not
                    self._mapping = exc.errno == errno.ENOSPC
                    log.warning(
                        "usage WAL segment %s: cannot reserve and map %d bytes (%s); "
                        "appending records with write(2)",
                        path,
                        size,
                        exc,
                    )
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            if mapped is not None:
                mapped.close()
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._close_segment()
        self._seq, self._path, self._fd, self._map, self._used = seq, path, fd, mapped, 0

    def _reserved(self) -> tuple[Path, int] | None:
        """(path, records' length) of the current segment if it has space reserved past
        its records."""
        if self._map is None or self._path is None:
            return None
        return self._path, self._used

    def _unmap(self) -> None:
        """Go on appending to the current segment with write(2), after its records."""
        mapped, self._map = self._map, None
        if mapped is not None and self._fd is not None:
            mapped.close()
            os.ftruncate(self._fd, self._used)
            os.lseek(self._fd, self._used, os.SEEK_SET)

    def _close_segment(self) -> None:
        """Unmap and close the current segment (its pages stay in the page cache, written
        back by the kernel)."""
        mapped, self._map = self._map, None
        fd, self._fd = self._fd, None
        if mapped is not None:
            mapped.close()
        if fd is not None:
            os.close(fd)

    def _delete_segments(self, upto: int, after: int = 0) -> None:
        for path in self._segments():
            if after < _segment_seq(path) <= upto:
                path.unlink(missing_ok=True)

    def _drain(self, upto: int, limit: int | None = None) -> tuple[int, int, bool]:
        """Store the records of the segments <= ``upto``, oldest first, in inserts of whole
        segments of about ``_DRAIN_CHUNK`` records, deleting the segments of each insert
        once it is stored, until ``limit`` records are stored (None: all). Returns (records
        read, new ones, whether none of those segments is left). Memory: one insert's
        records."""
        read = inserted = 0
        paths: list[Path] = []
        records: list[UsageRecord] = []

        def store() -> None:
            nonlocal read, inserted
            if records:
                inserted += self._sink.record_usage(records)
            for path in paths:
                path.unlink(missing_ok=True)
            read += len(records)
            self.last_stored_s = time.time()  # before the count shows them stored
            self._backlog = max(0, self._backlog - len(records))
            paths.clear()
            records.clear()

        for path in self._segments():
            if _segment_seq(path) > upto:
                break
            if limit is not None and read + len(records) >= limit:
                store()
                return read, inserted, False
            paths.append(path)
            records.extend(_read_segment(path))
            if len(records) >= _DRAIN_CHUNK:
                store()
        store()
        return read, inserted, True

    def _adopt_leftovers(self) -> int:
        """Make the segments left by a previous process the backlog. Their records are
        counted by line ends, not parsed (``_count_lines``): a torn line counts but is not a
        record, and the count is set right once the backlog is stored."""
        segments = self._segments()
        self._seq = _segment_seq(segments[-1]) if segments else 0
        lines = sum(_count_lines(path.read_bytes()) for path in segments)
        if lines:
            self._backlog_upto, self._backlog = self._seq, lines
            log.info(
                "usage WAL: %d records left by a previous run (%d segments); storing them "
                "while serving",
                lines,
                len(segments),
            )
        else:  # empty leftovers (a clean stop's truncated segment): nothing to store
            self._delete_segments(upto=self._seq)
        return lines


def _count_lines(data: bytes) -> int:
    """Lines in a segment's bytes: its line ends, and text after the last one (a record whose
    line end a kill or a lost page cut off still reads), NUL tails aside."""
    lines = data.count(b"\n")
    tail = data[data.rfind(b"\n") + 1 :].strip(b"\0 \t\r")
    return lines + 1 if tail else lines


def _read_segment(path: Path) -> list[UsageRecord]:
    """The records of one segment. A mapped segment's unused tail is NULs, and so is a page
    the kernel had not written back when the machine went down (later pages may have been)."""
    records = []
    for line in path.read_bytes().split(b"\n"):
        line = line.strip(b"\0")
        record = decode(line) if line.strip() else None
        if record is not None:
            records.append(record)
    return records
