"""Archiving a purge, and restoring what it archived: the rules every backend shares.

A backend supplies two primitives (``StorageBackend._gather`` and ``_restore``, see base.py); this
module does the rest, once:

* :class:`Archiving` is the hook at every batch boundary of a purge with an archive
  (``PurgeJob.boundary``): after ``on_batch`` and before anything of the batch is deleted, it gathers
  everything the purge will delete of each run of the batch, writes it as one verified object
  (:meth:`ArchiveWriter.write_batch`) and only then returns; an :class:`ArchiveError` stops the purge
  there, nothing of that batch deleted. Runs archived by an unfinished purge (a crash between archive
  and delete) are not written again. Runs archived and then kept (changed, or held by a child created
  meanwhile) are recorded as superseded; the manifest is written last (:meth:`Archiving.close`).
* :func:`encode` / :func:`decode`: the store's raw values as JSON values and back, exactly (datetimes,
  bytes, decimals, enums and dataclasses tagged), so a restored store is row-, item- and byte-equal.
* :func:`read_archive` and :func:`restore`: the newest archived line of each run, restored parents first,
  refusing any run that exists.

The format: docs/archive.md.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import importlib
import json
import logging
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from workflow_retention.archive import (
    BATCH_SUFFIX,
    MANIFEST,
    OK,
    ArchiveStore,
    ArchiveWriter,
    check_format,
    decode_lines,
    purge_folders,
    read_manifest,
    records_digest,
    run_line,
    sha256,
    unfinished,
    verified_objects,
)
from workflow_retention.exceptions import ArchiveError, ConfigurationError, RetentionError, StorageError
from workflow_retention.planning import RunRef
from workflow_retention.timeutil import utcnow

if TYPE_CHECKING:
    from workflow_retention.base import StorageBackend
    from workflow_retention.report import PurgeReport

log = logging.getLogger("workflow_retention")

#: What ``StorageBackend._gather`` returns per run: the run as plans see it, and its records
#: (table, item kind or folder -> rows, items or files, as raw values; :func:`encode` makes them JSON).
Gathered = tuple[RunRef, dict[str, list[Any]]]

#: Modules whose classes an archived value may name (``$object``, ``$enum``): the engine's, and plain namespaces.
_TRUSTED_MODULES = ("pyworkflow.", "types")


def _encoded(records: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """A run's records as an archive line holds them (:func:`encode`)."""
    return {kind: [encode(r) for r in rows] for kind, rows in records.items()}


def record_value(record: Any) -> str:
    """A raw record's whole value as one comparable text (mapping order ignored): what
    :meth:`Archiving.unarchived` compares when a record may have been rewritten in place."""
    return json.dumps(record, sort_keys=True, default=encode)


def version_of(ref: RunRef) -> str:
    """The version a purge's re-check compares (:meth:`RunRef.same_version`): status and updated_at as an instant."""
    when = ref.updated_at.astimezone(UTC).isoformat() if ref.updated_at is not None else "unreadable"
    return f"{ref.status}@{when}"


# -- values ------------------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """A raw value of a store as a JSON value that :func:`decode` turns back into an equal value of the same type."""
    if value is None or isinstance(value, (bool, int, str)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {"$float": repr(value)}
        return value
    if isinstance(value, enum.Enum):
        return {"$enum": _class_name(type(value)), "value": encode(value.value)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        return {"$time": value.isoformat()}
    if isinstance(value, timedelta):
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        items = sorted((encode(v) for v in value), key=repr)
        return {"$set": items} if isinstance(value, set) else {"$frozenset": items}
    if isinstance(value, dict):
        keys = list(value)
        if all(isinstance(k, str) and not k.startswith("$") for k in keys) and keys == sorted(keys):
            return {k: encode(v) for k, v in value.items()}  # (lines are written with sorted keys: order kept)
        return {"$dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$object": _class_name(type(value)),
                "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, types.SimpleNamespace):
        return {"$object": "types:SimpleNamespace", "fields": {k: encode(v) for k, v in vars(value).items()}}
    raise ArchiveError(f"cannot archive a value of type {type(value).__name__}")


def decode(value: Any) -> Any:
    """The raw value :func:`encode` turned into ``value``; :class:`ArchiveError` for anything :func:`encode`
    cannot have written (a damaged or altered archive): never a class outside the engine, never a call of
    anything but an engine enum or a standard type."""
    try:
        return _decode(value)
    except ArchiveError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError) as exc:
        raise ArchiveError(f"an archived value cannot be decoded ({type(exc).__name__}): the archive is damaged "
                           "or was not written by workflow-retention") from exc


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 or (len(value) == 2 and ("$enum" in value or "$object" in value)):
        tag = next((k for k in value if k.startswith("$")), None)
        if tag is not None:
            return _decode_tagged(tag, value)
    return {k: _decode(v) for k, v in value.items()}


_STRING_TAGS = ("$float", "$datetime", "$date", "$time", "$decimal", "$uuid", "$bytes")


def _decode_tagged(tag: str, value: dict[str, Any]) -> Any:
    body = value[tag]
    simple: dict[str, Callable[[Any], Any]] = {
        "$float": float, "$datetime": datetime.fromisoformat, "$date": date.fromisoformat,
        "$time": time.fromisoformat, "$timedelta": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
        "$bytes": lambda v: base64.b64decode(v, validate=True), "$decimal": Decimal, "$uuid": uuid.UUID,
        "$tuple": lambda v: tuple(_decode(x) for x in v), "$set": lambda v: {_decode(x) for x in v},
        "$frozenset": lambda v: frozenset(_decode(x) for x in v),
        "$dict": lambda v: {_decode(k): _decode(x) for k, x in v},
    }
    if tag in simple:
        if tag in _STRING_TAGS and not isinstance(body, str):
            raise ArchiveError(f"an archived {tag} value is not a string")
        return simple[tag](body)
    if tag == "$enum":
        cls = _trusted_class(body)
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise ArchiveError(f"an archived enum names {body!r}, which is not an enum: refused")
        return cls(_decode(value["value"]))
    if tag == "$object":
        cls = _trusted_class(body)
        fields = {k: _decode(v) for k, v in value["fields"].items()}
        if cls is types.SimpleNamespace:
            return types.SimpleNamespace(**fields)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ArchiveError(f"an archived object names {body!r}, which is not a dataclass: refused")
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ArchiveError(f"an archived {body} has fields it does not declare: {sorted(unknown)[:3]}")
        obj = cls.__new__(cls)  # the stored fields as they were, without running __init__ / __post_init__
        for name, field_value in fields.items():
            object.__setattr__(obj, name, field_value)
        return obj
    raise ArchiveError(f"unknown tag {tag!r} in an archived value")


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _trusted_class(name: Any) -> Any:
    module, _, qualname = str(name).partition(":")
    if not (module == "types" or module.startswith(_TRUSTED_MODULES)) or not qualname:
        raise ArchiveError(f"an archived value names class {name!r}, outside the engine's modules: refused")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ArchiveError(f"an archived value names class {name!r}, which cannot be loaded here") from exc
    return found


# -- the purge's hook --------------------------------------------------------------------------------


@dataclass
class Archiving:
    """One purge's archiving: :meth:`batch` at every boundary, :meth:`close` at the end."""

    backend: StorageBackend
    writer: ArchiveWriter
    #: (run_id, version) -> object, archived by unfinished purges (not written again).
    earlier: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Those unfinished purges (the manifest continues them when this purge finishes ok).
    continues: list[str] = field(default_factory=list)
    #: Their objects (name -> SHA-256 as read): the ok manifest lists them, so restore can verify them.
    continued: dict[str, str] = field(default_factory=dict)
    #: (run_id, version) -> digest of the records they archived (reused only while the run's records are the same).
    earlier_digests: dict[tuple[str, str], str] = field(default_factory=dict)
    #: run_id -> (version, object) archived by this purge and not yet seen deleted or kept.
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Runs archived in this purge's own objects, and runs found archived by an unfinished purge.
    archived: int = 0
    reused: int = 0
    #: Part lines written (records of committed runs found later: :meth:`records`).
    parts: int = 0
    #: run_id -> :func:`~workflow_retention.archive.records_digest` of its records as archived at the batch
    #: boundary (:meth:`records_differ`; taken then: a store may hand out live objects the engine changes later).
    digests: dict[str, str] = field(default_factory=dict)
    #: run_id -> its records as gathered (and archived) at the batch boundary, kept until the run is settled
    #: (one batch's worth): :meth:`unarchived` compares a cascade's findings with them.
    gathered: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    @classmethod
    def start(cls, backend: StorageBackend, store: ArchiveStore, cutoff: datetime,
              started_at: datetime) -> Archiving:
        """Check the archive can be written and read what unfinished purges archived; before the store is read."""
        store.check()
        earlier = unfinished(store)
        if earlier.folders:
            log.warning("archive %s: %d unfinished purge(s) archived %d run version(s); they are not archived "
                        "again", store.url, len(earlier.folders), len(earlier.runs))
        writer = ArchiveWriter(store, backend=backend.url, cutoff=cutoff, started_at=started_at)
        return cls(backend, writer, earlier.runs, earlier.folders, earlier.objects, earlier.digests)

    def batch(self, ids: Sequence[str]) -> None:
        """Archive the runs of one batch (those of ``ids`` that have a record), verified, before it is deleted."""
        self.settle(final=False)
        wanted = [i for i in dict.fromkeys(ids) if i not in self.pending]
        if not wanted:
            return
        gathered = self.backend._gather(wanted)
        stamp = utcnow().isoformat()
        lines = []
        for run_id, (ref, records) in gathered.items():
            encoded = _encoded(records)
            digest = self.digests[run_id] = records_digest(encoded)
            self.gathered[run_id] = {kind: list(found) for kind, found in records.items()}
            version = version_of(ref)
            earlier = self.earlier.get((run_id, version))
            if earlier is not None and self.earlier_digests.get((run_id, version)) == digest:
                # archived and verified by a purge that did not finish, with these very records: not again
                self.pending[run_id] = (version, earlier)
                self.reused += 1
                continue
            lines.append(run_line(self.backend.name, run_id, version, encoded,
                                  parent_run_id=ref.parent_run_id, archived_at=stamp))
        if not lines:
            return
        written = self.writer.write_batch(lines)
        self.archived += len(lines)
        for line in lines:
            self.pending[line["run_id"]] = (line["run_version"], written.name)

    def rows_differ(self, counted: Mapping[str, Mapping[str, int]]) -> set[str]:
        """The runs of ``counted`` (run_id -> kind -> records, counted again under the delete's lock) whose
        records are not the ones gathered for the archive: the engine added or removed some since (an event,
        a hook, a flag: writes that leave the run's version alone). Such a run must be kept, as a changed one
        is: the delete would remove what the archive does not hold."""
        return {run_id for run_id, kinds in counted.items() if run_id in self.gathered
                and {k: n for k, n in kinds.items() if n} != self._counts(run_id)}

    def _counts(self, run_id: str) -> dict[str, int]:
        """How many records of each kind this purge archived of ``run_id`` (kinds without any left out)."""
        return {kind: len(found) for kind, found in self.gathered[run_id].items() if found}

    def unarchived(self, run_id: str, kind: str, found: Sequence[Any], identity: Callable[[Any], Any]) -> list[Any]:
        """Those of ``found`` (``run_id``'s records of ``kind`` that a cascade found after the run's commit and
        is about to delete) that are not among the records archived at its boundary, compared by ``identity``
        (a record's key): the engine wrote them since. The caller archives them (:meth:`records`) before the
        delete. Empty for a run this purge did not gather (one an interrupted purge committed)."""
        records = self.gathered.get(run_id)
        if records is None:
            return []
        have = {identity(r) for r in records.get(kind, ())}
        return [r for r in found if identity(r) not in have]

    def records_differ(self, gathered: Mapping[str, Gathered]) -> set[str]:
        """The runs of ``gathered`` (read again under the delete's lock, as ``_gather`` reads them) whose
        records are not, value for value, the ones archived: such a run must be kept (:meth:`rows_differ`
        compares counts only, where reading every record twice would cost too much)."""
        return {run_id for run_id, (_ref, records) in gathered.items()
                if run_id in self.digests and records_digest(_encoded(records)) != self.digests[run_id]}

    def records(self, found: Mapping[str, Mapping[str, list[Any]]]) -> None:
        """Archive records of runs already committed, found after their batch and about to be deleted (the step
        checkpoints a store finds by one scan after the batches): one verified object of ``part`` lines, each
        merged by restore into the run's line archived before it. A part an unfinished purge archived with the
        same content is not written again."""
        stamp = utcnow().isoformat()
        lines = []
        for run_id, records in sorted(found.items()):
            encoded = {kind: [encode(r) for r in rows] for kind, rows in records.items() if rows}
            if not encoded:
                continue
            version = "part:" + sha256(json.dumps(encoded, sort_keys=True).encode())[:32]
            if (run_id, version) in self.earlier:
                self.reused += 1
                continue
            line = run_line(self.backend.name, run_id, version, encoded, archived_at=stamp)
            line["part"] = True
            lines.append(line)
        if lines:
            self.writer.write_batch(lines)
            self.parts += len(lines)
        for run_id, records in found.items():  # archived now: a later look at the same records finds them
            if run_id in self.gathered:
                for kind, rows in records.items():
                    self.gathered[run_id].setdefault(kind, []).extend(rows)

    def _forget(self, run_id: str) -> None:
        """Drop what was kept of a settled run to compare the delete with (memory: one batch's worth)."""
        self.gathered.pop(run_id, None)
        self.digests.pop(run_id, None)

    def settle(self, final: bool) -> None:
        """Forget the archived runs that are gone (deleted); record as superseded those kept: present with
        another version, or (``final``: the purge is over) present at all."""
        if not self.pending:
            return
        fresh = self.backend._read_runs(set(self.pending))
        kept: dict[str, dict[str, str]] = {}
        for run_id, (version, name) in list(self.pending.items()):
            ref = fresh.get(run_id)
            if ref is None:
                del self.pending[run_id]
                self._forget(run_id)
            elif final or version_of(ref) != version:
                kept.setdefault(name, {})[run_id] = version
                del self.pending[run_id]
                self._forget(run_id)
        for name, runs in sorted(kept.items()):
            self.writer.supersede(runs, name)

    def close(self, outcome: str, report: PurgeReport) -> None:
        """Record the kept runs and write the manifest (last). ``outcome``: ``ok``, ``stopped`` or ``failed``."""
        if outcome == OK:
            self.settle(final=True)
        report.archive = {"url": self.writer.store.url, "purge_id": self.writer.purge_id,
                          "objects": len(self.writer.objects), "runs": self.archived, "parts": self.parts,
                          "already_archived": self.reused, "superseded": len(self.writer.superseded)}
        self.writer.finish(outcome, report.to_dict(), self.continues if outcome == OK else (),
                           self.continued if outcome == OK else None)

    def abandon(self, report: PurgeReport, error: BaseException) -> None:
        """The purge failed: write a ``failed`` manifest if the archive still takes it (a rerun then knows
        what was archived); never raises (the purge's own error is the one reported)."""
        try:
            self.close("failed", report)
        except RetentionError as exc:
            log.warning("archive %s: the failed purge's manifest could not be written (%s); the next purge "
                        "finds its objects as unfinished", self.writer.store.url, exc)


def prepare(backend: StorageBackend, archive: ArchiveStore | str | None, dry_run: bool) -> ArchiveStore | None:
    """The archive a purge writes to (a URL is opened), refused before anything is read when the backend
    cannot archive."""
    if archive is None:
        return None
    from workflow_retention.archive import open_archive
    from workflow_retention.base import Capability

    store = open_archive(archive) if isinstance(archive, str) else archive
    if Capability.ARCHIVE not in backend.capabilities:
        raise ConfigurationError(f"the {backend.name} backend cannot archive its runs yet (no gather/restore "
                                 "primitives); purge it without an archive (see docs/archive.md)")
    if dry_run:
        store.check()
    return store


# -- reading an archive; restore ---------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """Where the newest archived line of a run is, and the objects holding its parts archived after it."""

    run_id: str
    archived_at: str
    object: str
    parent_run_id: str | None
    backend: str
    parts: tuple[str, ...] = ()
    #: A manifest vouches for its object (see :class:`Objects`).
    verified: bool = False


def purges(store: ArchiveStore) -> list[dict[str, Any]]:
    """Every purge in the archive: its folder, manifest fields (or ``unfinished``) and objects."""
    found = []
    for folder, leaves in sorted(purge_folders(store).items()):
        entry: dict[str, Any] = {"folder": folder, "objects": sorted(x for x in leaves if x.endswith(BATCH_SUFFIX))}
        if MANIFEST in leaves:
            manifest = read_manifest(store, folder)
            entry.update({k: manifest.get(k) for k in ("purge_id", "backend", "cutoff", "started_at", "outcome")})
            summary = (manifest.get("report") or {}).get("archive") or {}
            entry["runs"] = summary.get("runs", sum(o.get("runs", 0) for o in manifest.get("objects", ())))
            entry["superseded"] = len(manifest.get("superseded", ()))
        else:
            entry["outcome"] = "unfinished"
            entry["runs"] = None
        found.append(entry)
    return found


@dataclass
class Objects:
    """An archive's batch objects as restore and ``archive show`` read them: each checked against the
    checksum a manifest recorded for it (its purge's, or that of the purge that relied on it after a crash).
    An object that differs is an :class:`ArchiveError` (altered or damaged: nothing is restored from the
    archive); one in a finished purge that its manifest does not list was never verified, and is ignored; one
    no manifest vouches for (a purge that crashed, and no later purge ran) is read unverified, with a warning."""

    store: ArchiveStore
    checksums: dict[str, str]
    finished: set[str]
    #: (run_id, version, object) archived and then kept by their purge (recorded superseded in its manifest).
    superseded: set[tuple[str, str, str]] = field(default_factory=set)
    warned: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, store: ArchiveStore) -> Objects:
        checksums, finished, superseded = verified_objects(store)
        return cls(store, checksums, finished, superseded)

    def usable(self, name: str) -> bool:
        if name in self.checksums:
            return True
        listed = name.rpartition("/")[0] in self.finished
        if name not in self.warned:
            self.warned.add(name)
            if listed:
                log.warning("archive %s: %s is not listed in its purge's manifest (never verified): ignored",
                            self.store.url, name)
            else:
                log.warning("archive %s: %s has no manifest to check it against (its purge did not finish and no "
                            "later purge continued it): read unverified", self.store.url, name)
        return not listed

    def lines(self, name: str) -> list[dict[str, Any]]:
        data = self.store.get(name)
        expected = self.checksums.get(name)
        if expected is not None and sha256(data) != expected:
            raise ArchiveError(f"archive object {name!r} in {self.store.url} does not match the checksum its manifest "
                               f"recorded (sha256 {sha256(data)[:12]}..., expected {expected[:12]}...): the archive "
                               "was altered or damaged; nothing restored")
        return checked_lines(data, name)


def checked_lines(data: bytes, name: str) -> list[dict[str, Any]]:
    """The lines of an object, each checked to be a run line of this format (:class:`ArchiveError` naming it)."""
    lines = decode_lines(data)
    for n, line in enumerate(lines, 1):
        where = f"{name} line {n}"
        check_format(line, where)
        records = line.get("records")
        if not (isinstance(line.get("run_id"), str) and line["run_id"] and isinstance(line.get("backend"), str)
                and isinstance(line.get("run_version"), str) and isinstance(line.get("archived_at", ""), str)
                and isinstance(line.get("parent_run_id", ""), (str, type(None)))
                and isinstance(records, dict) and all(isinstance(k, str) and isinstance(v, list)
                                                      for k, v in records.items())):
            raise ArchiveError(f"{where} is not an archived run (run_id, backend, run_version, records)")
    return lines


def lines_of(store: ArchiveStore, name: str) -> list[dict[str, Any]]:
    """The checked lines of one object, unverified (:class:`Objects` verifies them)."""
    return checked_lines(store.get(name), name)


def read_archive(store: ArchiveStore, objects: Objects | None = None,
                 kept: set[str] | None = None) -> dict[str, Entry]:
    """run_id -> where its newest archived line is (by ``archived_at``, then object name), among the objects
    ``objects`` (default: :meth:`Objects.of`) accepts; a line a manifest vouches for wins over one none does.
    A version its purge recorded superseded (archived, then kept: that purge did not delete it) is never
    chosen; ``kept`` collects the runs that have only such lines."""
    objects = objects or Objects.of(store)
    newest: dict[str, Entry] = {}
    parts: dict[str, list[tuple[str, str]]] = {}
    superseded: set[str] = set()
    for folder, leaves in sorted(purge_folders(store).items()):
        for leaf in sorted(x for x in leaves if x.endswith(BATCH_SUFFIX)):
            name = f"{folder}/{leaf}"
            if not objects.usable(name):
                continue
            for line in objects.lines(name):
                when = str(line.get("archived_at", ""))
                if line.get("part"):
                    parts.setdefault(line["run_id"], []).append((when, name))
                    continue
                if (line["run_id"], line["run_version"], name) in objects.superseded:
                    superseded.add(line["run_id"])
                    continue
                entry = Entry(line["run_id"], when, name, line.get("parent_run_id"), line["backend"],
                              verified=name in objects.checksums)
                old = newest.get(entry.run_id)
                if old is None or (entry.verified, entry.archived_at, entry.object) > (
                        old.verified, old.archived_at, old.object):
                    newest[entry.run_id] = entry
    if kept is not None:
        kept.update(superseded - set(newest))
    for run_id, found in parts.items():
        main = newest.get(run_id)
        if main is not None:
            after = sorted({n for w, n in found if (w, n) > (main.archived_at, main.object)})
            newest[run_id] = dataclasses.replace(main, parts=tuple(after))
    return newest


#: Why :func:`restore` refused a run that is in the store (expected with ``--all``).
EXISTS = "exists in the store"


@dataclass
class RestoreReport:
    """What :func:`restore` wrote and refused."""

    written: list[str] = field(default_factory=list)
    #: run_id -> why it was not written.
    refused: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"written": sorted(self.written), "refused": dict(sorted(self.refused.items())),
                "records": dict(sorted(self.counts.items()))}


def _levels(chosen: Mapping[str, Entry]) -> list[list[Entry]]:
    """The chosen runs by depth among themselves (a parent that is restored too comes first)."""
    depth: dict[str, int] = {}

    def of(run_id: str) -> int:
        seen: list[str] = []
        node: str | None = run_id
        while node is not None and node in chosen and node not in depth and node not in seen:
            seen.append(node)
            node = chosen[node].parent_run_id
        base = depth.get(node, -1) if node is not None else -1
        for n in reversed(seen):
            base += 1
            depth[n] = base
        return depth[run_id]

    levels: dict[int, list[Entry]] = {}
    for run_id in sorted(chosen):
        levels.setdefault(of(run_id), []).append(chosen[run_id])
    return [levels[k] for k in sorted(levels)]


def restore(backend: StorageBackend, store: ArchiveStore, run_ids: Iterable[str] | None,
            on_progress: Callable[[int], None] | None = None) -> RestoreReport:
    """Write the newest archived line of each of ``run_ids`` (None: every archived run) back into ``backend``,
    parents before children, refusing runs that exist (and runs not in the archive, or archived from another
    kind of store). Reads the archive twice (an index, then the objects holding the chosen runs)."""
    from workflow_retention.base import Capability

    if Capability.ARCHIVE not in backend.capabilities:
        raise ConfigurationError(f"the {backend.name} backend cannot restore archived runs yet")
    objects = Objects.of(store)
    kept: set[str] = set()
    index = read_archive(store, objects, kept)
    report = RestoreReport()
    wanted = sorted(set(index) | kept) if run_ids is None else list(dict.fromkeys(run_ids))
    chosen: dict[str, Entry] = {}
    superseded = [run_id for run_id in wanted if run_id not in index and run_id in kept]
    backend.open()
    present = backend._read_runs(set(superseded)) if superseded else {}
    for run_id in wanted:
        entry = index.get(run_id)
        if entry is None and run_id in kept:
            report.refused[run_id] = EXISTS if run_id in present else (
                "its archived version was superseded: the purge kept the run (it changed after it was archived), "
                "so no purge of this archive deleted it")
        elif entry is None:
            report.refused[run_id] = "not in the archive"
        elif entry.backend != backend.name:
            report.refused[run_id] = f"archived from a {entry.backend} store, not {backend.name}"
        else:
            chosen[run_id] = entry
    for chunk_start in range(0, len(chosen), max(1, backend.batch_size)):
        ids = set(sorted(chosen)[chunk_start:chunk_start + backend.batch_size])
        for run_id in sorted(backend._read_runs(ids)):
            report.refused[run_id] = EXISTS
            del chosen[run_id]
    orphans = {e.parent_run_id for e in chosen.values() if e.parent_run_id and e.parent_run_id not in chosen}
    present = backend._read_runs(orphans) if orphans else {}
    for run_id, entry in sorted(chosen.items()):  # a child is never written without its parent
        parent = entry.parent_run_id
        if parent and parent not in chosen and parent not in present:
            report.refused[run_id] = (f"its parent run {parent} is neither in the store nor restored with it "
                                      f"(restore it too: --run {parent}, or --all)")
            del chosen[run_id]
    try:
        for level in _levels(chosen):
            _restore_level(backend, objects, chosen, level, report, on_progress)
    except (StorageError, ArchiveError) as exc:  # say what is already back (whole runs): a rerun refuses those
        if not report.written:
            raise
        raise (ArchiveError if isinstance(exc, ArchiveError) else StorageError)(
            f"{exc}; {len(report.written)} run(s) restored before this (e.g. {', '.join(sorted(report.written)[:3])}); "
            "a rerun refuses them as existing") from exc
    return report


#: Runs in a row whose restore fails one by one before the failure is taken for the store's, not theirs.
_FAILING_IN_A_ROW = 3


def _write(backend: StorageBackend, lines: list[dict[str, Any]], report: RestoreReport) -> list[dict[str, Any]]:
    """Write ``lines`` at once; if the store refuses them (one run whose key a live run holds, a row in the way),
    write them one by one and refuse, with the store's reason, each that fails (each write is whole or nothing).
    The lines written; raises when several in a row fail (the store, not the runs)."""
    try:
        backend._restore(lines)
        return lines
    except (StorageError, ArchiveError):
        if len(lines) == 1 and not report.written:
            raise
    written: list[dict[str, Any]] = []
    failing = 0
    for line in lines:
        try:
            backend._restore([line])
        except (StorageError, ArchiveError) as exc:
            failing += 1
            if failing >= _FAILING_IN_A_ROW:
                raise
            report.refused[line["run_id"]] = f"the store refused it: {exc}"
            continue
        failing = 0
        written.append(line)
    return written


def _restore_level(backend: StorageBackend, objects: Objects, chosen: Mapping[str, Entry], level: list[Entry],
                   report: RestoreReport, on_progress: Callable[[int], None] | None) -> None:
    """Write one level of the chosen runs (parents are in an earlier level), object by object."""
    by_object: dict[str, set[str]] = {}
    for entry in level:
        if entry.parent_run_id in report.refused and entry.parent_run_id in chosen:
            report.refused[entry.run_id] = f"its parent run {entry.parent_run_id} was not restored (see its reason)"
            continue
        by_object.setdefault(entry.object, set()).add(entry.run_id)
    for name, ids in sorted(by_object.items()):
        lines = [line for line in objects.lines(name) if line["run_id"] in ids and not line.get("part")]
        for line in lines:
            for part_object in chosen[line["run_id"]].parts:
                for part in objects.lines(part_object):
                    if part["run_id"] == line["run_id"] and part.get("part"):
                        for kind, rows in part["records"].items():
                            line["records"].setdefault(kind, []).extend(rows)
            try:
                line["records"] = {kind: _newest(backend, kind, [decode(r) for r in rows])
                                   for kind, rows in line["records"].items()}
            except ArchiveError as exc:
                raise ArchiveError(f"run {line['run_id']} in {name}: {exc}") from exc
        for line in _write(backend, lines, report):
            report.written.append(line["run_id"])
            for kind, rows in line["records"].items():
                report.counts[kind] = report.counts.get(kind, 0) + len(rows)
        if on_progress is not None:
            on_progress(len(report.written))


def _newest(backend: StorageBackend, kind: str, records: list[Any]) -> list[Any]:
    """``records`` of one kind with, for each key the backend names (:meth:`StorageBackend._record_key`), only
    the last: a part line archived later (a record the engine rewrote before the delete) replaces the earlier."""
    keyed = [(backend._record_key(kind, r), r) for r in records]
    if all(k is None for k, _ in keyed):
        return records
    last = {k: i for i, (k, _) in enumerate(keyed) if k is not None}
    return [r for i, (k, r) in enumerate(keyed) if k is None or last[k] == i]


def archived_runs(store: ArchiveStore, folder: str) -> Iterator[dict[str, Any]]:
    """The runs one purge archived: run id, version, parent, object and record counts (``archive show``)."""
    manifest = read_manifest(store, folder) if store_has(store, f"{folder}/{MANIFEST}") else {}
    superseded = {(s["run_id"], s["version"]) for s in manifest.get("superseded", ())}
    objects = Objects.of(store)
    for name in sorted(n for n in store.names(folder) if n.endswith(BATCH_SUFFIX)):
        if not objects.usable(name):
            continue
        for line in objects.lines(name):
            yield {"run_id": line["run_id"], "run_version": line["run_version"], "object": name,
                   "parent_run_id": line.get("parent_run_id"), "part": bool(line.get("part")),
                   "superseded": (line["run_id"], line["run_version"]) in superseded,
                   "records": {k: len(v) for k, v in sorted(line["records"].items())}}


def store_has(store: ArchiveStore, name: str) -> bool:
    folder, _, _leaf = name.rpartition("/")
    return name in set(store.names(folder))
