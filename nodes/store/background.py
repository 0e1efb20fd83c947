"""Background dataset writing: PNG/JPEG encoding, file writes, fsyncs and manifest appends run on a
worker thread, so the node that hands images over returns at once (the GPU does not wait for them).

One ``BackgroundWriter`` per dataset folder per process (``for_dataset``), shared by every writer
node of the process. What the caller's results depend on stays on the caller's thread and is cheap:
item-id dedup (against the dataset *and* items handed over but not stored yet), per-class quotas
(the same), label folder collisions, mask and image-shape checks, the records themselves
(``DatasetWriter.plan``). The worker then encodes a few files (``CHUNK`` items) into memory without
any lock, and only for the durable steps takes the dataset lock: temp file -> fsync -> ``os.replace`` -> folder fsync
-> embeddings, manifest lines (+ fsync) -> metadata rows (``DatasetWriter.store_encoded``, the same
protocol as ``DatasetWriter.write``). A kill loses only items still in memory; files placed
without their line are parked in ``orphans/`` by the next open's reconcile, and resume makes the
missing items again.

Back-pressure: at most ``max_batches`` hand-overs wait while the worker writes one; a hand-over to a
full queue blocks the caller (so memory stays bounded when encoding is slower than generating).

Errors: the first background error is logged when it happens and raised, naming the file and the
problem, by the next ``submit`` / ``open`` / ``flush`` of that dataset (then cleared). ``flush``
waits until every handed-over item is durable; readers that need the items call it (Finalize,
Evaluate, the filter's history), the process calls it at exit. Resume planners do not wait: they
count ``handed_over_records`` as stored (so they neither plan them again nor over-fill a class).

Plain module: no ComfyUI; a caller passes ``interrupted`` (a callable that raises to cancel) to make
its waits cancellable. A cancelled wait leaves the queue as it was: a batch is handed over entirely
(registered and queued in one step under the lock) or not at all.
"""
from __future__ import annotations

import atexit
import io
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import masks
from .layout import DatasetError, DatasetWriteError, check_tree
from . import handover
from .fsio import write_bytes
from .writer import DatasetWriter, Planned, WriteResult, encode_image, to_uint8

MAX_BATCHES = 2          # hand-overs that may wait while the worker writes one
CHUNK = 4                # items encoded, then made durable and recorded, at a time
_POLL_S = 0.1            # how often a blocked caller checks ``interrupted``
_log = logging.getLogger(__name__)


@dataclass
class _Job:
    planned: list[Planned]
    fmt: str
    quality: int
    png_text: dict | None
    quotas: dict


class BackgroundWriter:
    """Writes one dataset's items on a worker thread; see the module docstring.

    ``encode(arr, fmt, quality, png_text, fileobj)`` encodes an image (default
    ``writer.encode_image``) and ``sink(fileobj, data)`` writes encoded bytes into a temp file
    (default ``fileobj.write``): tests inject slow or failing ones.
    """

    def __init__(self, dataset_dir, max_batches: int = MAX_BATCHES, encode: Callable = encode_image,
                 sink: Callable = write_bytes):
        if int(max_batches) < 1:
            raise ValueError(f"max_batches {max_batches!r}: must be >= 1")
        self.dir = Path(dataset_dir)
        self.max_batches = int(max_batches)
        self._encode, self._sink = encode, sink
        self._lock = threading.Lock()              # guards everything below (held briefly)
        self._changed = threading.Condition(self._lock)
        self._session = threading.RLock()          # one caller at a time uses the planning writer
        self._queue: deque[_Job] = deque()
        self._busy: _Job | None = None             # the batch being written
        self._handed_over: dict[str, dict] = {}        # id -> record, handed over and not durable yet
        self._error: BaseException | None = None   # first background error not raised yet
        self._lost = 0                             # items not stored since that error
        self.batches_handed_over = 0                       # batches handed over so far (a change marker)
        self._writer: DatasetWriter | None = None     # the callers' writer (plan, status, sync writes)
        self._committer: DatasetWriter | None = None   # the worker's writer (durable steps)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._pid = os.getpid()

    # -- the caller's side ---------------------------------------------------------------------
    @contextmanager
    def open(self, image_format: str = "png", quality: int = 95, quotas: dict | None = None):
        """The process's long-lived writer of this dataset, set to this call's format, quality and
        quotas and brought up to date (created, repaired, new manifest lines read); use it for
        ``submit``, ``status`` and synchronous writes (``write``), one caller at a time. Raises a
        background error not raised yet."""
        with self._session:
            self.raise_error()
            if self._writer is None:
                writer = DatasetWriter(self.dir, image_format, quality, quotas)
                self._writer = writer.__enter__()
                writer.share_handed_over(self._handed_over_copy)   # its synchronous writes see the queue too
            else:
                self._writer.configure(image_format, quality, quotas)
                self._writer.reopen()
            yield self._writer

    def submit(self, writer: DatasetWriter, items, models: dict | None = None, sampler_settings: dict | None = None,
               png_text: dict | None = None, interrupted: Callable[[], None] | None = None) -> WriteResult:
        """Decide now what ``writer.write`` would store (duplicates, quotas, labels, masks, image
        shapes are checked here, for the whole batch) and hand it to the worker; returns the counts
        as ``write`` would (``written`` = handed over). Blocks while the queue is full;
        ``interrupted()`` may raise meanwhile, and then nothing of this batch was handed over."""
        with self._session:
            self.raise_error()
            result = WriteResult()
            check_tree(self.dir)
            with self._lock:
                handed_over = dict(self._handed_over)   # before the refresh: stored ones show up there
            writer.refresh()
            planned = writer.plan(items, models, sampler_settings, result, handed_over=handed_over, check_images=True)
            if not planned:
                return result
            job = _Job(planned, writer.format, writer.quality, png_text, dict(writer.quotas))
            self._start()
            with self._lock:
                while len(self._queue) >= self.max_batches:   # back-pressure
                    self._changed.wait(_POLL_S)
                    if interrupted is not None:
                        interrupted()
                    self._raise_locked()
                for p in planned:
                    self._handed_over[p.rec["id"]] = p.rec
                self._queue.append(job)
                self.batches_handed_over += 1
                self._changed.notify_all()
            for p in planned:
                result.written[p.rec["decision"]] += 1
                result.paths.append(self.dir / p.rec["file"])
            return result

    def status(self, writer: DatasetWriter) -> dict[str, dict]:
        """``writer.status()`` with the items handed over and not stored yet counted as stored."""
        return writer.status(handed_over=self.handed_over_records())

    def _handed_over_copy(self) -> dict[str, dict]:
        with self._lock:
            return dict(self._handed_over)

    def handed_over_records(self) -> list[dict]:
        """Records handed over and not durable yet (a snapshot)."""
        with self._lock:
            return list(self._handed_over.values())

    records = handed_over_records   # the handover source interface

    def batches(self) -> int:
        return self.batches_handed_over

    def handed_over_count(self) -> int:
        """Items handed over and not durable yet."""
        with self._lock:
            return len(self._handed_over)

    def backlog(self) -> int:
        """Batches handed over and not finished: waiting + the one being written (<= max_batches + 1)."""
        with self._lock:
            return len(self._queue) + (self._busy is not None)

    def flush(self, interrupted: Callable[[], None] | None = None) -> None:
        """Wait until every handed-over item is durable (or failed), then raise a background error not
        raised yet. ``interrupted()`` may raise meanwhile: the queue goes on as it was."""
        if threading.current_thread() is self._thread:
            return   # the worker never waits for itself
        with self._lock:
            while self._queue or self._busy is not None:
                self._changed.wait(_POLL_S)
                if interrupted is not None:
                    interrupted()
            self._raise_locked()

    def raise_error(self) -> None:
        """Raise (once) the first background error since the last one was raised."""
        with self._lock:
            self._raise_locked()

    def close(self) -> None:
        """Flush, stop the worker and forget this writer (``for_dataset`` makes a new one)."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._stop = True
                self._changed.notify_all()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
            with _REGISTRY_LOCK:
                key = handover.dataset_key(self.dir)
                if _REGISTRY.get(key) is self:
                    del _REGISTRY[key]
                    handover.unregister(self.dir, self)

    def _raise_locked(self) -> None:
        error, lost = self._error, self._lost
        if error is None:
            return
        self._error, self._lost = None, 0
        path = getattr(error, "path", self.dir)
        problem = str(error)
        if isinstance(error, DatasetError) and problem.startswith(f"{error.path}: "):
            problem = problem[len(f"{error.path}: "):]
        elif not isinstance(error, DatasetError):
            problem = f"{type(error).__name__}: {problem}"
        raise DatasetWriteError(
            path, f"background write failed: {problem} [{lost} handed-over item(s) were not stored in all; "
                  "the dataset is consistent and resume makes them again]") from error

    # -- the worker ----------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = False
            self._thread = threading.Thread(target=self._work, name=f"dtgen-writer:{self.dir.name}", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop:
                    self._changed.wait()
                if not self._queue:
                    return
                job = self._busy = self._queue.popleft()
                self._changed.notify_all()   # a slot is free: a blocked submit may go on
            try:
                self._write(job)
            except BaseException as e:   # noqa: BLE001 - kept and raised to the next caller
                self._failed(job, e)
            finally:
                with self._lock:
                    for p in job.planned:
                        self._handed_over.pop(p.rec["id"], None)   # durable (in the manifest) or lost
                    self._busy = None
                    self._changed.notify_all()

    def _write(self, job: _Job) -> None:
        """Encode and store the batch ``CHUNK`` items at a time: files reach the disk soon after
        the hand-over, the encoded bytes in memory stay bounded, and a kill or an error loses at
        most the chunk in progress (earlier chunks are committed)."""
        for start in range(0, len(job.planned), CHUNK):
            chunk = job.planned[start:start + CHUNK]
            for p in chunk:   # encoding: the CPU-heavy part, holding no lock
                try:
                    arr = to_uint8(p.item.image, f"item {p.position} (label {p.item.label!r}, index {p.item.index})")
                    if p.mask is not None:
                        p.mask_data = _encoded(lambda f, m=p.mask: masks.encode(m, f))
                    p.image_data = _encoded(lambda f, a=arr: self._encode(a, job.fmt, job.quality, job.png_text, f))
                except Exception as e:
                    for q in chunk:
                        q.image_data = q.mask_data = None
                    raise DatasetWriteError(self.dir / p.rec["file"], f"could not encode {job.fmt} image "
                                            f"({type(e).__name__}: {e}); it and the rest of its batch were "
                                            "not written") from e
            if self._committer is None:
                self._committer = DatasetWriter(self.dir).__enter__()
            else:
                self._committer.reopen()
            try:
                result = self._committer.store_encoded(chunk, sink=self._sink, quotas=job.quotas)
            finally:
                for p in chunk:   # the bytes are on disk (or lost): free them now
                    p.image_data = p.mask_data = None
            with self._lock:
                for p in chunk:
                    self._handed_over.pop(p.rec["id"], None)
                self._changed.notify_all()
            raced = sum(result.skipped_duplicate.values()) + result.skipped_quota
            if raced:   # another process stored the same items, or filled the class, since they were planned
                _log.info("DTGen Dataset Writer: %s: %d handed-over item(s) not stored: another writer stored "
                          "them (%d) or filled their class quota (%d) meanwhile", self.dir, raced,
                          sum(result.skipped_duplicate.values()), result.skipped_quota)

    def _failed(self, job: _Job, error: BaseException) -> None:
        stored = self._committer.stored if self._committer is not None else (lambda rid: False)
        lost = sum(1 for p in job.planned if not stored(p.rec["id"]))
        _log.error("DTGen Dataset Writer: background write to %s failed, %d item(s) not stored: %s",
                   self.dir, lost, error)
        with self._lock:
            if self._error is None:
                self._error = error
            self._lost += lost


def _encoded(write: Callable) -> bytes:
    buf = io.BytesIO()
    write(buf)
    return buf.getvalue()


# -- one writer per dataset folder per process ---------------------------------------------------
_REGISTRY: dict[str, BackgroundWriter] = {}
_REGISTRY_LOCK = threading.Lock()
_ATEXIT = []


def for_dataset(dataset_dir, **options) -> BackgroundWriter:
    """This process's background writer of ``dataset_dir`` (made on first use; ``options`` are
    ``BackgroundWriter``'s and only apply then)."""
    key = handover.dataset_key(dataset_dir)
    with _REGISTRY_LOCK:
        bw = _REGISTRY.get(key)
        if bw is None or bw._pid != os.getpid():   # none yet, or inherited through fork (no worker here)
            bw = _REGISTRY[key] = BackgroundWriter(dataset_dir, **options)
            handover.register(dataset_dir, bw)   # readers see its items without importing this module
            if not _ATEXIT:
                atexit.register(flush_all)
                _ATEXIT.append(True)
        elif options:
            raise ValueError(f"{dataset_dir}: a background writer is already open; options apply only when it is made")
        return bw


def existing(dataset_dir) -> BackgroundWriter | None:
    if not _REGISTRY:
        return None
    with _REGISTRY_LOCK:
        bw = _REGISTRY.get(handover.dataset_key(dataset_dir))
    return bw if bw is not None and bw._pid == os.getpid() else None


def flush(dataset_dir, interrupted: Callable[[], None] | None = None) -> None:
    """Wait until this process's handed-over items of ``dataset_dir`` are durable; raises a
    background error. A no-op where nothing was handed over (other processes, the CLI)."""
    bw = existing(dataset_dir)
    if bw is not None:
        bw.flush(interrupted)


def flush_all() -> None:
    """Flush every background writer of this process (at exit); errors are logged, not raised."""
    with _REGISTRY_LOCK:
        writers = [bw for bw in _REGISTRY.values() if bw._pid == os.getpid()]
    for bw in writers:
        try:
            bw.flush()
        except Exception as e:   # noqa: BLE001 - at exit nobody can catch it: say it
            _log.error("DTGen Dataset Writer: %s", e)
