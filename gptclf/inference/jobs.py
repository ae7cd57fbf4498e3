"""Resumable ``predict`` jobs: ``predict --input FILE --output OUT`` keeps its work beside ``OUT``.

A long job (millions of rows) must survive its machine: a preemption, a deploy, an OOM elsewhere.
So the records are not written to ``OUT`` but to a hidden work folder beside it,
``.<OUT's name>.partial/``, holding

- ``records``: the output so far: the very bytes of ``OUT`` for JSONL, CSV, TSV and table; for
  Parquet, whose file cannot be appended to, each chunk's rows pickled one after the other (turned
  into ``OUT`` by the same writer at the end, so the file is the uninterrupted run's);
- ``journal.json``: how far the job got (whole chunks, rows, the bytes of ``records`` they fill)
  and a fingerprint of the input (path, size, modification time, SHA-256 of its first and last
  MiB), of the run (its files' sizes and times) and of every option that shapes a record.

After each chunk the records are synced, then the journal is replaced atomically: whatever stops
the job (Ctrl-C, SIGTERM, kill -9, a power cut, a full disk), the journal names a prefix of
``records`` that is whole. ``--resume`` cuts ``records`` back to it and goes on from the next
chunk, which is where the uninterrupted run's chunk started too, so the finished ``OUT`` is byte
for byte the same; a changed input, run or option is refused. At the end ``OUT`` appears whole by
one rename (the journal first says so, so a stop between the two is finished by ``--resume``),
and the work folder goes. A lock (``flock`` on the folder) keeps two jobs off one ``OUT``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from gptclf.errors import BadInputError, write_error
from gptclf.fileio import atomic_write_json, fsync_folder
from gptclf.rundir.build import WorkLock, lock_holder

#: The work folder of ``OUT`` is ``.<name>`` + this, beside it (as finetune's run folders).
WORK_SUFFIX = ".partial"
JOURNAL = "journal.json"
RECORDS = "records"
#: Parquet's whole file, assembled before it is renamed onto ``OUT``.
ASSEMBLED = "assembled"
#: What ``journal.json`` says it is; another version's work is not resumed.
VERSION = 1
#: Bytes at each end of the input whose SHA-256 goes into its fingerprint.
SAMPLE_BYTES = 1 << 20

Note = Callable[[str], None]
#: ``point`` or ``point:N``: the process kills itself (SIGKILL) the N-th time (default 1st) it
#: reaches that point of a job: ``written`` (a chunk's records written, its journal not yet),
#: ``committed`` (a chunk recorded) or ``complete`` (the journal says whole, before the rename).
#: For fault tests: a kill -9 exactly there, which no outside watcher can time.
FAULT_ENV = "GPTCLF_FAULT_AT"
_reached: dict[str, int] = {}


def _fault(point: str) -> None:
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def work_dir(out: Path) -> Path:
    """The work folder of the output file ``out``: ``<parent>/.<name>.partial``."""
    return out.with_name(f".{out.name}{WORK_SUFFIX}")


def input_fingerprint(path: Path) -> dict[str, Any]:
    """What tells a changed input: its resolved path, size, modification time and the SHA-256 of
    its first and last MiB (reading all of a 100 GB file to start a job would cost minutes)."""
    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(SAMPLE_BYTES))
        if st.st_size > SAMPLE_BYTES:
            fh.seek(max(SAMPLE_BYTES, st.st_size - SAMPLE_BYTES))
            digest.update(fh.read(SAMPLE_BYTES))
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sample_sha256": digest.hexdigest(),
    }


def run_fingerprint(run: Path) -> dict[str, Any]:
    """What tells a changed run (or export folder): each of its files' size and modification time
    (a finetune or export replaces them all)."""
    files = {}
    for entry in sorted(run.iterdir()):
        if entry.is_file() and not entry.name.startswith("."):
            st = entry.stat()
            files[entry.name] = [st.st_size, st.st_mtime_ns]
    return {"path": str(run.resolve()), "files": files}


@dataclass
class Journal:
    """How far a job got.

    Attributes:
        fingerprint: ``{"input": ..., "run": ..., "options": ...}`` of the job.
        chunks: Whole chunks written.
        rows: Input rows they hold.
        bytes: Bytes of ``records`` they fill (the header, if any, included).
        complete: ``OUT``'s content is whole (in ``records``, or ``assembled`` for Parquet) and
            only its rename is left.
    """

    fingerprint: dict[str, Any]
    chunks: int = 0
    rows: int = 0
    bytes: int = 0
    complete: bool = False
    version: int = field(default=VERSION)


def read_journal(folder: Path) -> Journal | None:
    """The journal of a work folder; None when there is none or it is not one this version reads."""
    try:
        raw = json.loads((folder / JOURNAL).read_text(encoding="utf-8"))
        journal = Journal(**raw)
    except (OSError, ValueError, TypeError):
        return None
    numbers = (journal.chunks, journal.rows, journal.bytes, journal.version)
    typed = all(type(n) is int and n >= 0 for n in numbers) and isinstance(journal.complete, bool)
    if not typed or not isinstance(journal.fingerprint, dict):  # hand-edited or damaged: not ours
        return None
    return journal if journal.version == VERSION else None


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words (``the input``, ``--batch-size 32 -> 64``)."""
    said = [
        f"the {what} {new[what].get('path', '')} has changed".replace("  ", " ")
        for what in ("input", "run")
        if old.get(what) != new.get(what)
    ]
    before, after = old.get("options", {}), new.get("options", {})
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            was, now = (_shown(v.get(name, None)) for v in (before, after))
            said.append(f"--{name.replace('_', '-')} was {was}, now {now}")
    return said


def _shown(value: Any) -> str:
    """An option's value as a message shows it: ``not given`` for None, else as it was typed."""
    if value is None:
        return "not given"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


class Job:
    """The work folder of one resumable ``predict --output OUT``: locked while it lives; its
    ``records`` appended a chunk at a time (:meth:`commit`), renamed onto ``OUT`` by :meth:`finish`,
    kept after a stop for ``--resume``, removed by :meth:`close` after bad input.

    Attributes:
        out: The output file.
        folder: The work folder.
        journal: How far the job is (what :meth:`commit` last recorded).
        resumed: The job goes on from an earlier one's journal.
    """

    def __init__(self, out: Path, folder: Path, journal: Journal, lock: WorkLock, resumed: bool) -> None:
        self.out, self.folder, self.journal, self.resumed = out, folder, journal, resumed
        self._lock = lock
        self._raw: BinaryIO | None = None
        self._text: IO[str] | None = None
        self.finished = False

    @classmethod
    def open(cls, out: Path, fingerprint: dict[str, Any], *, resume: bool, note: Note) -> Job:
        """Take ``out``'s work folder (made if need be) and decide where the job starts.

        With ``resume``: after the earlier job's last whole chunk, when its fingerprint is this
        one's (a job with nothing to resume starts at the first row, said in a note). Without:
        at the first row; an earlier job's work is discarded, said in a note.

        Raises:
            BadInputError: Another process is writing ``out``; ``--resume`` with another input,
                run or option; damaged work; a place that cannot be written.
        """
        folder = work_dir(out)
        try:
            longest = os.pathconf(out.parent, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            longest = 255
        if len(os.fsencode(folder.name)) > longest:
            raise BadInputError(
                f"--output {out.name[:40]}...: the name is too long for its work folder .NAME{WORK_SUFFIX} "
                f"beside it (at most {longest - len(WORK_SUFFIX) - 1} bytes): choose a shorter name"
            )
        if folder.exists() and not folder.is_dir():
            raise BadInputError(f"{folder} is in the way of predict's work folder for {out}: move it away")
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(exc, out.parent) from None
        lock = WorkLock(folder)
        if not lock.acquire():
            raise BadInputError(
                f"{lock_holder(folder)} is writing {out} right now (its work folder {folder} is in use): "
                "wait for it to end or choose another --output"
            )
        try:
            journal, resumed = cls._start(out, folder, fingerprint, resume, note)
        except BaseException:
            lock.release()
            raise
        return cls(out, folder, journal, lock, resumed)

    @staticmethod
    def _start(
        out: Path, folder: Path, fingerprint: dict[str, Any], resume: bool, note: Note
    ) -> tuple[Journal, bool]:
        old = read_journal(folder)
        if old is not None and resume:
            differ = changes(old.fingerprint, fingerprint)
            if differ:
                raise BadInputError(
                    f"--resume: {'; '.join(differ)} since the interrupted job of {out} began: resume with "
                    "the same input, run and options, or leave out --resume to start again"
                )
            records = folder / RECORDS
            size = records.stat().st_size if records.is_file() else -1
            if not old.complete and size < old.bytes:
                raise BadInputError(
                    f"the interrupted job's work in {folder} is damaged ({RECORDS} is shorter than its "
                    "journal says): leave out --resume to start again"
                )
            if not old.complete:
                with open(records, "r+b") as fh:  # what a stop left after the last whole chunk
                    fh.truncate(old.bytes)
                one = old.chunks == 1
                done = f"{old.chunks:,} chunk{'' if one else 's'} {'was' if one else 'were'} done"
                note(f"gptclf: resuming {out} after {old.rows:,} rows ({done})")
            return old, True
        if resume:
            note(f"gptclf: nothing to resume for {out}: starting at the first row")
        elif old is not None and old.rows:
            note(
                f"gptclf: starting {out} again: the interrupted job in {folder} ({old.rows:,} rows done) "
                "is discarded (--resume would have continued it)"
            )
        try:  # a read-only folder, no permission: said as any unwritable place
            for name in (JOURNAL, RECORDS, ASSEMBLED):
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
            (folder / RECORDS).touch()
        except OSError as exc:
            raise write_error(exc, out.parent) from None
        return Journal(fingerprint), False

    @property
    def records(self) -> Path:
        return self.folder / RECORDS

    def binary(self) -> BinaryIO:
        """``records`` opened for appending (bytes)."""
        if self._raw is None:
            self._raw = open(self.records, "ab")  # noqa: SIM115 (closed by close())
        return self._raw

    def text(self) -> IO[str]:
        """``records`` opened for appending, as UTF-8 text (what predict's writers take)."""
        if self._text is None:
            self._text = open(self.binary().fileno(), "a", encoding="utf-8", newline="", closefd=False)  # noqa: SIM115
        return self._text

    def commit(self, rows: int, chunks: int = 1) -> None:
        """Record ``chunks`` more whole chunks of ``rows`` rows, written to ``records``: synced
        first, then the journal replaced (a stop between the two loses only this chunk).

        Raises:
            DiskFullError, GptclfError: Writing failed (the journal still names the last whole chunk).
        """
        try:
            if self._text is not None:
                self._text.flush()
            raw = self.binary()
            raw.flush()
            os.fsync(raw.fileno())
            if chunks:
                _fault("written")
            j = self.journal
            updated = Journal(j.fingerprint, j.chunks + chunks, j.rows + rows, raw.tell(), False)
            atomic_write_json(self.folder / JOURNAL, asdict(updated))
        except OSError as exc:
            raise write_error(exc, self.out.parent) from None
        self.journal = updated
        if chunks:
            _fault("committed")

    def finish(self, assemble: Callable[[Path, Path], None] | None = None) -> None:
        """Put the whole output in place: ``records`` (or, with ``assemble(records, dest)``, the
        file it makes of them) renamed onto ``out``; then the work folder goes.

        Raises:
            DiskFullError, GptclfError: Writing failed (the work is kept for ``--resume``).
        """
        try:
            if not self.journal.complete:
                for fh in (self._text, self._raw):
                    if fh is not None:
                        fh.flush()
                if self._raw is not None:
                    os.fsync(self._raw.fileno())
                if assemble is not None:
                    assemble(self.records, self.folder / ASSEMBLED)
                self.journal = Journal(**(asdict(self.journal) | {"complete": True}))
                atomic_write_json(self.folder / JOURNAL, asdict(self.journal))
            _fault("complete")
            whole = self.folder / (ASSEMBLED if assemble is not None else RECORDS)
            if whole.is_file():  # else a stop came after the rename: out is whole already
                os.replace(whole, self.out)
                fsync_folder(self.out.parent)
            elif not self.out.is_file():
                raise BadInputError(
                    f"the interrupted job's work in {self.folder} is damaged (its finished file is gone): "
                    "leave out --resume to start again"
                )
        except OSError as exc:
            raise write_error(exc, self.out.parent) from None
        self.finished = True

    def close(self, failed: BaseException | None = None) -> bool:
        """Release the folder. It goes when the job finished, failed on bad input (another input
        or option is needed: nothing to resume) or never recorded a chunk; else it stays for
        ``--resume``.

        Returns:
            Whether the work was kept for ``--resume``.
        """
        for fh in (self._text, self._raw):
            if fh is not None:
                with contextlib.suppress(OSError, ValueError):
                    fh.close()
        self._text = self._raw = None
        recorded = (self.folder / JOURNAL).is_file()
        keep = not self.finished and recorded and not isinstance(failed, BadInputError)
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
        self._lock.release()
        return keep


def pickled_chunks(path: Path) -> Iterator[Any]:
    """The objects pickled one after another into ``path`` (a Parquet job's ``records``); only
    this process's own work folder is ever read so."""
    with open(path, "rb") as fh:
        while True:
            try:
                yield pickle.load(fh)
            except EOFError:
                return
            except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError):
                raise BadInputError(
                    f"the interrupted job's work in {path.parent} is damaged ({RECORDS} cannot be read "
                    "back): leave out --resume to start again"
                ) from None


def check_pickled(path: Path, chunks: int) -> None:
    """Read back a Parquet job's ``records`` before it goes on: every chunk the journal names.

    Raises:
        BadInputError: Damaged (unreadable, or another number of chunks).
    """
    found = sum(1 for _ in pickled_chunks(path))
    if found != chunks:
        raise BadInputError(
            f"the interrupted job's work in {path.parent} is damaged ({RECORDS} holds {found} chunks, its "
            f"journal says {chunks}): leave out --resume to start again"
        )


def run_job(
    job: Job,
    chunks: Iterator[list[Any]],
    write: Callable[[list[Any]], None],
    assemble: Callable[[Path, Path], None] | None = None,
) -> None:
    """Write ``chunks`` into ``job`` a whole chunk at a time (each recorded in its journal), then
    put ``OUT`` in place. SIGINT or SIGTERM finishes the chunk being written and stops with the
    journal up to date (:class:`gptclf.errors.Interrupted`, exit 130 or 143); a second one stops at once.
    """
    from gptclf.training.checkpoints import InterruptGuard

    with InterruptGuard(
        before="the work so far is kept: the same command with --resume continues it"
    ) as guard:
        if not job.resumed:
            job.commit(0, chunks=0)  # the header, if the format has one: a stop from here on resumes
        guard.deferring = True
        for preds in chunks:
            _write(job, write, preds)
            job.commit(len(preds))
            guard.check(
                f"stopped after {job.journal.rows:,} rows, each written; the same command with --resume "
                "continues from there"
            )
        job.finish(assemble)


def _write(job: Job, write: Callable[[list[Any]], None], preds: list[Any]) -> None:
    """One chunk into ``job``'s records; a failed write (a full disk) names OUT's folder."""
    try:
        write(preds)
    except OSError as exc:
        raise write_error(exc, job.out.parent) from None


def parquet_assembler(make_writer: Callable[[BinaryIO], Any]) -> Callable[[Path, Path], None]:
    """How a Parquet job's ``records`` (each chunk's rows, pickled) become the file: every chunk
    through one writer made by ``make_writer`` (a :class:`gptclf.inference.outputs.ParquetWriter`),
    as the uninterrupted run wrote them."""

    def assemble(records: Path, dest: Path) -> None:
        try:
            with open(dest, "wb") as fh:
                writer = make_writer(fh)
                for rows in pickled_chunks(records):
                    writer.write_rows(rows)
                writer.close()
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            dest.unlink(missing_ok=True)  # a part of a file: of no use, and space on a full disk
            raise

    return assemble


def pickling_writer(job: Job, rows_of: Callable[[list[Any]], Any]) -> Callable[[list[Any]], None]:
    """A chunk writer that pickles ``rows_of(chunk)`` into a Parquet job's ``records``."""

    def write(preds: list[Any]) -> None:
        pickle.dump(rows_of(preds), job.binary(), protocol=pickle.HIGHEST_PROTOCOL)

    return write


@dataclass(frozen=True)
class JobRequest:
    """One ``predict --input FILE --output OUT`` job, as the CLI checked it.

    Attributes:
        run: The run directory or ONNX export folder.
        input_path: The input file.
        out: The output file (a link's target).
        options: Every option that shapes a record, by name (their fingerprint; the device,
            decision and long-text groups' fields among them).
        resume: ``--resume``.
        part: ``--shard K/N`` as ``(K, N)``.
    """

    run: Path
    input_path: Path
    out: Path
    options: dict[str, Any]
    resume: bool = False
    part: tuple[int, int] | None = None


#: Makes the writer of a text format: ``(out, decider, header) -> writer`` (the table's is the CLI's).
WriterFactory = Callable[[IO[str], Any, bool], Callable[[list[Any]], None]]
#: Wraps a job's chunks in its progress: ``(chunks, rows already done) -> chunks``.
ProgressWrap = Callable[[Iterator[list[Any]], int], Iterator[list[Any]]]


def predict_job(
    req: JobRequest,
    make_writer: WriterFactory,
    show: ProgressWrap | None = None,
    note: Note | None = None,
) -> Any:
    """``predict``'s core for a file job: classify ``req.input_path`` into ``req.out`` as a
    resumable job, in one process or, under ``torchrun``, spread over the ranks (each rank on its
    own device: the GPU of its local rank, else the CPU with the node's cores divided between its
    ranks), chunk ``i`` on rank ``i mod world``, rank 0 writing them all in input order.

    Returns:
        The :class:`gptclf.inference.predict.Predictor` (its counts, for the CLI's last lines).

    Raises:
        BadInputError: A bad input, run, option or output place; ``--resume`` refused.
        Interrupted: SIGINT or SIGTERM, after the chunk (the round of chunks) under way.
        GptclfError: Writing failed, a rank failed or left (the work kept for ``--resume``).
    """
    from gptclf.data.tables import check_file
    from gptclf.distributed import process_group
    from gptclf.errors import write_error

    say = note or (lambda line: None)
    if not req.out.parent.is_dir():  # a missing folder, or a file: said as any unwritable place
        import errno

        code = errno.ENOTDIR if req.out.parent.exists() else errno.ENOENT
        raise write_error(OSError(code, os.strerror(code)), req.out.parent)
    check_file(req.input_path)
    if req.out.resolve() == req.input_path.resolve():
        raise BadInputError(f"--output {req.out} is the input: write the results to another file")
    if req.run.is_dir() and req.out.resolve().parent == req.run.resolve():
        raise BadInputError(f"--output {req.out} lies inside the run {req.run}: write the results elsewhere")
    if not req.run.is_dir():
        from gptclf.inference.predict import open_run

        open_run(req.run)  # says what is wrong with it
    options = req.options
    with process_group(options.get("device") or "auto") as shard:
        job: Job | None = None
        state: tuple[str, Any, Any] = ("ok", 0, False)
        if shard.is_main:
            fingerprint = {
                "input": input_fingerprint(req.input_path),
                "run": run_fingerprint(req.run),
                "options": options,
            }
            try:
                job = Job.open(req.out, fingerprint, resume=req.resume, note=say)
                state = ("ok", job.journal.rows, job.journal.complete)
            except BadInputError as exc:
                state = ("bad", str(exc), None)
                if not shard.distributed:
                    raise
        state = shard.from_main(state)
        if state[0] == "bad":
            raise BadInputError(state[1])
        failed: BaseException | None = None
        try:
            return _run(req, shard, job, int(state[1]), bool(state[2]), make_writer, show)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            if job is not None and job.close(failed) and failed is not None and "--resume" not in str(failed):
                say(
                    f"gptclf: the work so far ({job.journal.rows:,} rows) is kept in {job.folder}: the same "
                    "command with --resume continues it"
                )


def _run(
    req: JobRequest,
    shard: Any,
    job: Job | None,
    done: int,
    complete: bool,
    make_writer: WriterFactory,
    show: ProgressWrap | None,
) -> Any:
    from gptclf.device import resolve_device
    from gptclf.distributed import divide_cpu_threads, local_job
    from gptclf.inference.chunking import chunks as in_chunks
    from gptclf.inference.outputs import ParquetWriter
    from gptclf.inference.predict import CHUNK_SIZE, open_predictor, text_stream
    from gptclf.option_groups import DecisionOptions, DeviceOptions, LongTextOptions

    o = req.options
    device = DeviceOptions(**{f: o[f] for f in DeviceOptions.__dataclass_fields__})
    if shard.distributed:  # this rank's device; the CPU's cores divided between the node's ranks
        dev = resolve_device(device.device, local_job())
        device = DeviceOptions(str(dev), device.precision, device.batch_size)
        divide_cpu_threads(dev, shard)
    keep = o["keep_columns"]
    # The input is read up to its first record before the run loads: a bad file is one line first.
    given = None if complete else text_stream(
        [], str(req.input_path), o["text_column"], o["id_column"], o["input_format"], o["encoding"],
        keep, req.part, done,
    )  # fmt: skip
    predictor = open_predictor(
        req.run,
        engine=o["engine"],
        quantize=o["quantize"],
        device=device,
        decide=DecisionOptions(**{f: o[f] for f in DecisionOptions.__dataclass_fields__}),
        long=LongTextOptions(**{f: o[f] for f in LongTextOptions.__dataclass_fields__}),
    )
    write, assemble = None, None
    if job is not None:
        if o["format"] == "parquet":
            if job.resumed and not job.journal.complete:
                check_pickled(job.records, job.journal.chunks)
            write = pickling_writer(job, ParquetWriter(job.binary(), predictor.decider, keep).rows)
            assemble = parquet_assembler(lambda fh: ParquetWriter(fh, predictor.decider, keep))
        else:
            # Parts after the first write no CSV/TSV header; nor does a resumed job (it has one).
            header = (req.part is None or req.part[0] == 1) and not job.resumed
            write = make_writer(job.text(), predictor.decider, header)
    if complete:  # stopped at the rename: only that is left
        if job is not None:
            job.finish(assemble)
        return predictor
    assert given is not None
    if not shard.distributed:
        assert job is not None and write is not None
        chunks = predictor.predict_chunks(given)
        run_job(job, show(chunks, done) if show else chunks, write, assemble)
        return predictor
    _run_spread(shard, job, predictor, in_chunks(given, CHUNK_SIZE), write, assemble, show, done)
    return predictor


def _run_spread(
    shard: Any,
    job: Job | None,
    predictor: Any,
    raw: Iterator[list[Any]],
    write: Callable[[list[Any]], None] | None,
    assemble: Callable[[Path, Path], None] | None,
    show: ProgressWrap | None,
    done: int,
) -> None:
    """The torchrun job: rounds of ``world`` chunks, chunk ``k`` of a round on rank ``k``; rank 0
    gathers a round's predictions, writes them in order and records them, then all ranks go on,
    stop (a signal on any rank: after the round, journal up to date) or fail together."""
    from gptclf.errors import Interrupted
    from gptclf.training.checkpoints import InterruptGuard, signal_name

    kept = "the work so far is kept: the same command with --resume continues it"
    with InterruptGuard(before=kept) as guard:
        if job is not None and not job.resumed:
            job.commit(0, chunks=0)
        guard.deferring = True
        rounds = Rounds(shard, predictor, raw, lambda: guard.signum)
        chunks: Iterator[list[Any]] = (c for r in rounds for c in r)
        if job is not None and show is not None:
            chunks = show(chunks, done)
        for preds in chunks:
            if job is not None and write is not None:
                _write(job, write, preds)
                job.commit(len(preds))
        if rounds.stopped is not None:
            raise Interrupted(
                f"{signal_name(rounds.stopped)}: stopped after a whole round of chunks; the same command "
                "with --resume continues from there",
                rounds.stopped,
            )
        if job is not None:
            job.finish(assemble)


class Rounds:
    """A torchrun job's rounds: iterating gives each round's predictions in input order on rank 0
    (empty lists elsewhere); :attr:`stopped` is the signal that ended them early, if one did.

    Every rank reads the whole input (reading costs little next to the model) and classifies its
    chunk of each round; a gather brings the round to rank 0 with each rank's signal and error,
    and rank 0's decision (go on, stop, fail) is broadcast, so all ranks end together.
    """

    def __init__(
        self, shard: Any, predictor: Any, raw: Iterator[list[Any]], signum: Callable[[], int | None]
    ) -> None:
        self.shard, self.predictor, self.raw, self.signum = shard, predictor, raw, signum
        self.stopped: int | None = None

    def _take(self) -> tuple[list[Any] | None, bool, tuple[str, str] | None]:
        """This rank's chunk of the next round, whether the input ended, and a reading error."""
        mine = None
        for k in range(self.shard.world_size):
            try:
                chunk = next(self.raw)
            except StopIteration:
                return mine, True, None
            except BadInputError as exc:
                return mine, True, ("bad", str(exc))
            if k == self.shard.rank:
                mine = chunk
        return mine, False, None

    def __iter__(self) -> Iterator[list[list[Any]]]:
        import torch.distributed as dist

        from gptclf.errors import GptclfError

        shard, ended = self.shard, False
        while True:
            mine, end, error = (None, True, None) if ended else self._take()
            ended = ended or end
            preds = None
            if mine is not None and error is None:
                try:
                    preds = next(iter(self.predictor.predict_chunks(mine)))
                except BadInputError as exc:
                    error = ("bad", str(exc))
                except GptclfError as exc:
                    error = ("fail", f"rank {shard.rank}: {exc}")
            got: list[Any] = [None] * shard.world_size if shard.is_main else []
            decision: list[Any] = [None, None, False]
            try:
                payload = (preds, self.signum(), error)
                dist.gather_object(payload, got if shard.is_main else None, dst=0, group=shard.slow_group)
                if shard.is_main:
                    errors = [p[2] for p in got if p[2] is not None]
                    stop = next((p[1] for p in got if p[1] is not None), None)
                    decision = [errors[0] if errors else None, stop, any(p[0] is not None for p in got)]
                dist.broadcast_object_list(decision, src=0, group=shard.slow_group)
            except (RuntimeError, dist.DistBackendError) as exc:  # a rank died or left
                import re

                why = re.sub(r"\[[^\]]*\]?(:\d+)?", "", str(exc).splitlines()[0])
                why = re.split(r"\s*\.(\s|$)", why.strip(" :"))[0][:100]  # its first sentence
                raise GptclfError(
                    f"another process of the torchrun job stopped ({why or 'it left'}); every chunk written "
                    "so far is kept: the same torchrun command with --resume continues it"
                ) from None
            err, stop, more = decision
            if err is not None:
                raise (BadInputError if err[0] == "bad" else GptclfError)(err[1])
            if shard.is_main:
                yield [p[0] for p in got if p[0] is not None]
            if stop is not None:
                self.stopped = int(stop)
                return
            if not more:
                return
