"""Archives: where a purge writes each batch, verified, before deleting it.

``open_archive(url)`` gives an :class:`ArchiveStore` for ``file:///abs/dir``
or ``s3://bucket/prefix[?endpoint_url=...&region=...]`` (boto3; credentials
from the AWS chain only, never in the URL). Every object is written so that it
can never replace another (:meth:`ArchiveStore.put_new`: ``O_EXCL`` and a
hard link on file stores, ``PutObject`` with ``IfNoneMatch="*"`` on S3), then
read back and compared by SHA-256 (:func:`put_verified`): only a verified
object lets the caller delete what it holds.

:class:`ArchiveWriter` lays out one purge: its batch objects, the runs it
kept after archiving them (superseded), and a manifest written last. A purge
with no manifest is unfinished (it crashed or was stopped); :func:`archived_versions`
reads such purges so that a rerun does not archive the same run version twice.
The format is versioned and described in ``docs/archive.md``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import stat
import uuid
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote

from workflow_retention.exceptions import ArchiveError, BackendUnavailableError, ConfigurationError
from workflow_retention.urls import redact_url, split_url

#: The setting that names the archive.
SETTING = "PYWORKFLOW_RETENTION_ARCHIVE_URL"
#: ``format`` of every object and manifest; ``version`` changes when a reader must change.
FORMAT, FORMAT_VERSION = "workflow-retention-archive", 1
MANIFEST = "manifest.json"
#: A manifest's ``outcome`` when the purge finished; anything else ("failed", "stopped") leaves it unfinished.
OK = "ok"
BATCH_SUFFIX = ".jsonl.gz"
_FORMS = "file:///absolute/dir or s3://bucket[/prefix][?endpoint_url=...&region=...]"
_S3_PARAMS = {"endpoint_url", "region"}
#: The most an object's lines may take uncompressed: a purge refuses to archive a larger batch, restore refuses
#: to inflate a larger object (a gzip bomb).
MAX_OBJECT_BYTES = 1 << 30


class ArchiveCollision(ArchiveError):
    """An object of that name already exists: nothing was written (an archive never overwrites)."""


class ArchiveMismatch(ArchiveError):
    """An object read back differs from what was written: the batch it holds must not be deleted."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArchiveStore(ABC):
    """Objects by name (``a/b/c.jsonl.gz``, relative, ``/``-separated), written once, never replaced."""

    #: The archive's URL, safe to print.
    url: str

    @abstractmethod
    def put_new(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name`` durably; :class:`ArchiveCollision` if ``name`` exists (nothing written)."""

    @abstractmethod
    def get(self, name: str) -> bytes:
        """The object's bytes; :class:`ArchiveError` if it is missing or cannot be read."""

    @abstractmethod
    def names(self, prefix: str = "") -> Iterator[str]:
        """The names of the objects under ``prefix`` (any order)."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`ArchiveError` unless the archive is reachable and can be written."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def _clean_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise ArchiveError(f"invalid archive object name {name!r}")
    return path


class FileArchiveStore(ArchiveStore):
    """A folder: each object a file, created with ``O_EXCL`` under a temporary name, ``fsync``-ed, then
    hard-linked to its name (which fails if the name exists: no object is ever replaced) and the folder
    ``fsync``-ed. Folders inside the archive are opened one by one without following a symlink, and reads
    open regular files only, never following a symlink and never blocking: a symlink placed in the archive
    never redirects a write or a read (only the archive folder itself, the URL's path, may be a symlink)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*_clean_name(name).parts)

    def _folder(self, parts: Iterable[str], name: str, create: bool) -> int:
        """A descriptor of the folder ``parts`` under the root, each opened with ``O_NOFOLLOW`` (``create``: made
        if missing, and fsync-ed into its parent); FileNotFoundError if missing and not ``create``."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts:
                try:
                    inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o750, dir_fd=fd)
                        os.fsync(fd)
                    inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise ArchiveError(f"archive folder {part!r} (for {name!r}) in {self.url} is a symlink or not "
                                           "a folder: refused (an archive never follows a link inside it)") from exc
                    raise
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def put_new(self, name: str, data: bytes) -> None:
        *parts, leaf = _clean_name(name).parts
        try:
            folder = self._folder(parts, name, create=True)
            try:
                temp = f".{leaf}.{uuid.uuid4().hex}.tmp"
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=folder)
                try:
                    with os.fdopen(fd, "wb", closefd=False) as out:
                        out.write(data)
                        out.flush()
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:  # atomic, and never replaces an existing name
                    os.link(temp, leaf, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                except FileExistsError:
                    raise ArchiveCollision(f"archive object {name!r} already exists in {self.url}") from None
                finally:
                    os.unlink(temp, dir_fd=folder)
                os.fsync(folder)
            finally:
                os.close(folder)
        except ArchiveError:
            raise
        except OSError as exc:
            raise ArchiveError(f"cannot write archive object {name!r} to {self.url}: "
                               f"{exc.strerror or type(exc).__name__}") from exc

    def get(self, name: str) -> bytes:
        *parts, leaf = _clean_name(name).parts
        try:
            folder = self._folder(parts, name, create=False)
            try:
                fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
            finally:
                os.close(folder)
        except ArchiveError:
            raise
        except OSError as exc:
            raise ArchiveError(f"cannot read archive object {name!r} in {self.url}: "
                               f"{exc.strerror or type(exc).__name__}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError(f"archive object {name!r} in {self.url} is not a regular file")
            if st.st_size > MAX_OBJECT_BYTES:
                raise ArchiveError(f"archive object {name!r} in {self.url} is larger than any archive object "
                                   f"({st.st_size:,} bytes): refused")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def names(self, prefix: str = "") -> Iterator[str]:
        parts = _clean_name(prefix).parts if prefix else ()
        try:
            top = self._folder(parts, prefix, create=False)
        except FileNotFoundError:
            return
        except ArchiveError:
            raise
        except OSError as exc:
            raise ArchiveError(f"cannot list {prefix or '/'} in {self.url}: {exc.strerror or type(exc).__name__}") \
                from exc
        try:  # fwalk: folders opened relative to their parent, symlinks never followed
            for folder, dirs, files, _fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                dirs.sort()
                for file in sorted(files):
                    if not file.startswith("."):
                        yield PurePosixPath(*parts, folder, file).as_posix()
        finally:
            os.close(top)

    def check(self) -> None:
        if not self.root.is_dir():
            raise ArchiveError(f"archive folder {self.url} does not exist (create it first)")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ArchiveError(f"archive folder {self.url} is not writable by this user")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class S3ArchiveStore(ArchiveStore):
    """An S3 bucket and key prefix (any S3-compatible server: AWS, MinIO, moto). ``PutObject`` with
    ``IfNoneMatch="*"``: a name that exists answers 412 and nothing is written. Credentials come from
    the AWS chain (environment, shared files, instance roles)."""

    #: Attempts per request (botocore's standard retry mode: throttling, 5xx and connection errors).
    max_attempts = 5

    def __init__(self, bucket: str, prefix: str, url: str, *, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise BackendUnavailableError("S3 archive", "s3", exc) from exc
        self.bucket, self.prefix, self.url = bucket, prefix, url
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                   config=Config(retries={"mode": "standard", "max_attempts": self.max_attempts},
                                                 connect_timeout=10, read_timeout=60))

    def _key(self, name: str) -> str:
        return f"{self.prefix}{_clean_name(name)}"

    def _error(self, what: str, name: str, exc: Exception) -> ArchiveError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        return ArchiveError(f"cannot {what} archive object {name!r} in {self.url}: {code}")

    def put_new(self, name: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*")
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                raise ArchiveCollision(f"archive object {name!r} already exists in {self.url}") from exc
            raise self._error("write", name, exc) from exc
        except BotoCoreError as exc:
            raise self._error("write", name, exc) from exc

    def get(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error("read", name, exc) from exc
        return body

    def names(self, prefix: str = "") -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        start = self.prefix + (str(_clean_name(prefix)) + "/" if prefix else "")
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for entry in page.get("Contents", ()):
                    yield entry["Key"][len(self.prefix):]
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", prefix or "/", exc) from exc

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("reach", "/", exc) from exc


def open_archive(url: str, setting: str = SETTING) -> ArchiveStore:
    """The archive named by ``url``; a URL that cannot be used is a :class:`ConfigurationError` naming
    ``setting`` and the expected forms, raised before anything is read or written."""
    kind, args = _parse_url(url, setting)
    if kind == "file":
        return FileArchiveStore(*args)
    bucket, prefix, shown, endpoint, region = args
    return S3ArchiveStore(bucket, prefix, shown, endpoint_url=endpoint, region=region)


def check_archive_url(url: str, setting: str = SETTING) -> str:
    """``url`` (stripped) if :func:`open_archive` accepts it; checks the form only (no I/O, no driver)."""
    _parse_url(url, setting)
    return url.strip()


def _parse_url(url: str, setting: str) -> tuple[str, tuple[Any, ...]]:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{setting}: expected {_FORMS}; got an empty value")
    parts = split_url(url.strip(), what=setting)
    shown = redact_url(url.strip())
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigurationError(f"{setting}: expected {_FORMS}; got {shown!r}")
        path = Path(unquote(parts.path))
        if not path.is_absolute() or ".." in path.parts:
            raise ConfigurationError(f"{setting}: the folder must be an absolute path without '..'; got {shown!r}")
        return "file", (path, f"file://{path}")
    if parts.scheme == "s3":
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(f"{setting}: credentials do not belong in the URL (they come from the "
                                     f"AWS chain: environment, shared files, roles); got {shown!r}")
        bucket = parts.hostname or ""
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(params) - _S3_PARAMS)
        if unknown or parts.fragment:  # what the URL should not hold may be a secret: shown masked
            shown = redact_url(url.strip().partition("#")[0].partition("?")[0]) + "".join(
                f"{'?' if n == 0 else '&'}{k}={redact_url(v) if k in _S3_PARAMS else '***'}"
                for n, (k, v) in enumerate(params.items())) + ("#***" if parts.fragment else "")
        if not bucket or parts.fragment:
            raise ConfigurationError(f"{setting}: expected {_FORMS}; got {shown!r}")
        if unknown:
            raise ConfigurationError(f"{setting}: unknown parameter {unknown[0][:40]!r} (allowed: "
                                     f"{', '.join(sorted(_S3_PARAMS))}); got {shown!r}")
        endpoint = params.get("endpoint_url")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(f"{setting}: endpoint_url must be an http:// or https:// URL; got {shown!r}")
        if endpoint is not None and "@" in endpoint.partition("://")[2].partition("/")[0]:
            raise ConfigurationError(f"{setting}: credentials do not belong in endpoint_url (they come from the "
                                     f"AWS chain: environment, shared files, roles); got "
                                     f"{redact_url(url.strip()).partition('?')[0]!r}")
        prefix = parts.path.strip("/")
        return "s3", (bucket, prefix + "/" if prefix else "", shown, endpoint, params.get("region") or None)
    raise ConfigurationError(f"{setting}: expected {_FORMS}; got {shown!r}")


def put_verified(store: ArchiveStore, name: str, data: bytes) -> str:
    """Write ``data`` as a new object, read it back, and return its SHA-256; :class:`ArchiveMismatch` if
    what was read differs (the caller must then delete nothing of it)."""
    digest = sha256(data)
    store.put_new(name, data)
    back = store.get(name)
    if sha256(back) != digest:
        raise ArchiveMismatch(f"archive object {name!r} in {store.url} reads back different from what was "
                              f"written (sha256 {sha256(back)[:12]}..., expected {digest[:12]}...)")
    return digest


def encode_lines(records: Iterable[Mapping[str, Any]]) -> bytes:
    """gzip-compressed JSON Lines, deterministic (sorted keys, no timestamp in the gzip header); an
    :class:`ArchiveError` if the lines exceed :data:`MAX_OBJECT_BYTES` (restore would refuse the object)."""
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
                   for r in records).encode("utf-8")
    if len(text) > MAX_OBJECT_BYTES:
        raise ArchiveError(f"a batch of {len(text):,} bytes (uncompressed) is larger than an archive object may be "
                           f"({MAX_OBJECT_BYTES:,}): nothing of it archived or deleted; purge with a smaller "
                           f"--batch-size (PYWORKFLOW_RETENTION_BATCH_SIZE)")
    return gzip.compress(text, mtime=0)


def _inflate(data: bytes) -> bytes:
    """gzip ``data`` decompressed, never more than :data:`MAX_OBJECT_BYTES` (a gzip bomb is refused unread)."""
    out = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member (gzip.compress writes one)
        pending = rest
        while pending and not inflater.eof:
            out += inflater.decompress(pending, MAX_OBJECT_BYTES + 1 - len(out))
            if len(out) > MAX_OBJECT_BYTES:
                raise ArchiveError(f"archive object inflates to larger than {MAX_OBJECT_BYTES:,} bytes: refused "
                                   "(damaged, or not written by workflow-retention)")
            pending = inflater.unconsumed_tail
        if not inflater.eof:
            raise EOFError("truncated gzip data")
        rest = inflater.unused_data
    return bytes(out)


def decode_lines(data: bytes) -> list[dict[str, Any]]:
    """The records of an object written by :func:`encode_lines`."""
    try:
        text = _inflate(data).decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line]
    except (zlib.error, EOFError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArchiveError(f"archive object cannot be decoded: {type(exc).__name__}") from exc


@dataclass
class ArchivedObject:
    name: str
    sha256: str
    runs: int
    bytes: int


@dataclass
class ArchiveWriter:
    """One purge's part of an archive: ``purges/<purge_id>/`` holding ``batch-NNNNNN.jsonl.gz`` objects
    (one line per run: :func:`run_line`), ``superseded-NNNNNN.json`` objects (runs archived, then kept
    because they changed), and ``manifest.json``, written last by :meth:`finish`."""

    store: ArchiveStore
    backend: str
    cutoff: datetime
    started_at: datetime
    purge_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    objects: list[ArchivedObject] = field(default_factory=list)
    superseded: list[dict[str, str]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"purges/{self.started_at:%Y-%m-%d}-{self.purge_id}/"

    def write_batch(self, lines: list[dict[str, Any]]) -> ArchivedObject:
        """Archive one batch (its runs' lines) as a new, verified object; raises before anything is deleted."""
        data = encode_lines(lines)
        name = f"{self.prefix}batch-{len(self.objects) + 1:06d}{BATCH_SUFFIX}"
        written = ArchivedObject(name, put_verified(self.store, name, data), len(lines), len(data))
        self.objects.append(written)
        return written

    def supersede(self, runs: Mapping[str, str], obj: ArchivedObject | str) -> None:
        """Record that ``runs`` (run_id -> archived version), archived in ``obj`` (an object or its name), were
        kept: they changed, or a child created meanwhile held them."""
        if not runs:
            return
        where = obj if isinstance(obj, str) else obj.name
        entries = [{"run_id": r, "version": v, "object": where} for r, v in sorted(runs.items())]
        name = f"{self.prefix}superseded-{len(self.superseded) + 1:06d}.json"
        put_verified(self.store, name, json.dumps({"format": FORMAT, "version": FORMAT_VERSION,
                                                   "runs": entries}, sort_keys=True).encode())
        self.superseded.extend(entries)

    def finish(self, outcome: str, report: Mapping[str, Any], continues: Iterable[str] = (),
               continued: Mapping[str, str] | None = None) -> str:
        """Write the manifest (last): the purge's cutoff, store, outcome, report and every object with its
        checksum. ``continues``: the unfinished purges (folders) whose archived runs this one relied on
        (:func:`unfinished`); an ``ok`` manifest closes them, and lists their objects with the checksums they
        had when this purge relied on them (``continued``: name -> SHA-256), which restore verifies. Returns
        its name."""
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "purge_id": self.purge_id,
                    "backend": self.backend, "cutoff": self.cutoff.isoformat(),
                    "started_at": self.started_at.isoformat(), "outcome": outcome, "report": dict(report),
                    "objects": [vars(o) for o in self.objects], "superseded": self.superseded,
                    "continues": sorted(continues),
                    "continued": [{"name": n, "sha256": h} for n, h in sorted((continued or {}).items())]}
        name = self.prefix + MANIFEST
        put_verified(self.store, name, json.dumps(manifest, sort_keys=True, indent=1).encode())
        return name


def run_line(backend: str, run_id: str, version: str, records: Mapping[str, list[Any]], *,
             parent_run_id: str | None = None, archived_at: str | None = None) -> dict[str, Any]:
    """One archived run: everything the purge deletes of it, in the store's own terms (``records``: table,
    item kind or folder -> its rows, items or files as JSON values), with the version that was checked,
    its parent (restore writes parents first) and when it was archived (restore takes the newest line)."""
    line = {"format": FORMAT, "version": FORMAT_VERSION, "backend": backend, "run_id": run_id,
            "run_version": version, "records": dict(records)}
    if parent_run_id is not None:
        line["parent_run_id"] = parent_run_id
    if archived_at is not None:
        line["archived_at"] = archived_at
    return line


def read_manifest(store: ArchiveStore, folder: str) -> dict[str, Any]:
    """The manifest of the purge in ``folder`` (``purges/<day>-<id>``); :class:`ArchiveError` if unreadable."""
    try:
        manifest = json.loads(store.get(f"{folder}/{MANIFEST}"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"manifest {folder}/{MANIFEST} in {store.url} cannot be read: {type(exc).__name__}") from exc
    check_format(manifest, f"{folder}/{MANIFEST}")
    return dict(manifest)


def check_format(record: Any, where: str) -> None:
    """Refuse a record that is not of this format, or of a version this reader does not know."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ArchiveError(f"{where} is not a {FORMAT} record")
    if record.get("version") != FORMAT_VERSION:
        raise ArchiveError(f"{where} has format version {record.get('version')!r}; this reader knows "
                           f"{FORMAT_VERSION} only (upgrade workflow-retention)")


def purge_folders(store: ArchiveStore) -> dict[str, list[str]]:
    """Each purge folder (``purges/<day>-<id>``) with the leaf names of its objects."""
    by_purge: dict[str, list[str]] = {}
    for name in store.names("purges"):
        folder, _, leaf = name.rpartition("/")
        by_purge.setdefault(folder, []).append(leaf)
    return by_purge


@dataclass
class Unfinished:
    """What purges that did not finish ``ok`` archived, and no later ``ok`` purge continued."""

    #: The purge folders.
    folders: list[str] = field(default_factory=list)
    #: (run_id, version) -> the object that holds it.
    runs: dict[tuple[str, str], str] = field(default_factory=dict)
    #: name -> SHA-256 of each object those runs are in (a continuing manifest lists them: restore verifies them).
    objects: dict[str, str] = field(default_factory=dict)
    #: (run_id, version) -> :func:`records_digest` of what was archived (a rerun reuses the line only if the
    #: run's records are still the same: a row added since is archived, not deleted unarchived).
    digests: dict[tuple[str, str], str] = field(default_factory=dict)


def records_digest(records: Mapping[str, list[Any]]) -> str:
    """A digest of a run's encoded records that does not depend on the order rows were read in."""
    canonical = {kind: sorted(json.dumps(r, sort_keys=True, separators=(",", ":")) for r in rows)
                 for kind, rows in records.items() if rows}
    return sha256(json.dumps(canonical, sort_keys=True).encode())


def unfinished(store: ArchiveStore) -> Unfinished:
    """The runs archived by purges that crashed (no manifest), stopped or failed (manifest outcome not
    ``ok``), unless a later ``ok`` purge names them in ``continues``.

    A rerun does not archive such a run version again (it is verified in the archive already): it relies
    on that object, and its own ``ok`` manifest continues (closes) those purges.
    """
    folders = purge_folders(store)
    closed: set[str] = set()
    # folder -> the objects it verified (a failed or stopped purge's manifest lists them with their checksums),
    # or None (no manifest: a killed purge; each of its objects is trusted only if it decodes)
    open_: dict[str, dict[str, str] | None] = {}
    for folder, leaves in sorted(folders.items()):
        if MANIFEST not in leaves:
            open_[folder] = None
            continue
        manifest = read_manifest(store, folder)
        if manifest.get("outcome") == OK:
            closed.update(manifest.get("continues", ()))
        else:
            open_[folder] = {o["name"]: o["sha256"] for o in manifest.get("objects", ())}
    found = Unfinished()
    for folder, verified in open_.items():
        if folder in closed:
            continue
        found.folders.append(folder)
        names = sorted(verified) if verified is not None else sorted(
            f"{folder}/{leaf}" for leaf in folders[folder] if leaf.endswith(BATCH_SUFFIX))
        for name in names:
            data = store.get(name)
            if verified is not None and sha256(data) != verified[name]:
                continue  # not what was verified: its runs are archived again
            try:
                lines = decode_lines(data)
            except ArchiveError:
                continue  # written but never verified (killed mid-write): archived again
            for line in lines:
                found.runs[(line["run_id"], line["run_version"])] = name
                found.digests[(line["run_id"], line["run_version"])] = records_digest(line.get("records") or {})
            found.objects[name] = sha256(data)
    return found


def verified_objects(store: ArchiveStore) -> tuple[dict[str, str], set[str], set[tuple[str, str, str]]]:
    """Every batch object some manifest vouches for (name -> SHA-256: the objects a purge verified, and those of
    an unfinished purge a later one relied on, ``continued``), the purge folders that have a manifest, and the
    (run_id, version, object) they record as superseded (archived in that object, then kept: not deleted by that
    purge; a later purge may archive the same version again, and delete it)."""
    checksums: dict[str, str] = {}
    finished: set[str] = set()
    superseded: set[tuple[str, str, str]] = set()
    for folder, leaves in sorted(purge_folders(store).items()):
        if MANIFEST not in leaves:
            continue
        finished.add(folder)
        manifest = read_manifest(store, folder)
        for entry in [*manifest.get("objects", ()), *manifest.get("continued", ())]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                    or not isinstance(entry.get("sha256"), str):
                raise ArchiveError(f"manifest {folder}/{MANIFEST} in {store.url} lists an object without name "
                                   "and checksum")
            known = checksums.setdefault(entry["name"], entry["sha256"])
            if known != entry["sha256"]:
                raise ArchiveError(f"manifests in {store.url} disagree on the checksum of {entry['name']!r}")
        superseded.update((str(e.get("run_id")), str(e.get("version")), str(e.get("object")))
                          for e in manifest.get("superseded", ()) if isinstance(e, dict))
    return checksums, finished, superseded


def archived_versions(store: ArchiveStore) -> dict[str, set[str]]:
    """run_id -> versions archived by purges that are unfinished (see :func:`unfinished`)."""
    found: dict[str, set[str]] = {}
    for run_id, version in unfinished(store).runs:
        found.setdefault(run_id, set()).add(version)
    return found
