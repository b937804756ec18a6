"""Every file-system call of the file backend, and the translation of its errors.

:class:`Store`: the open directories of one store for one operation. The base directory is opened once
and each layout directory once relative to it (``O_DIRECTORY|O_NOFOLLOW``); every later open, stat,
rename and unlink is relative to those descriptors (``dir_fd=``), by a name that is one path component.
Records are opened ``O_NOFOLLOW|O_NONBLOCK`` and read only if ``fstat`` says they are regular files.
Locks are the engine's own ``flock`` locks (filelock's), taken on lock files opened here inside
``.locks/``; a lock file created as root is given the owner of ``.locks/``; files rewritten through a
temp file keep their owner, group and mode. Why: docs/backends/file.md, section 3.

Errors: a missing file is ``FileNotFoundError`` (callers treat it as gone); a record that cannot be used
is :class:`~.layout.Corrupt` (:class:`NotRegular` for a symlink, FIFO, directory...); every other OS error
(a permission, an I/O error) is a :class:`StorageError` naming the file, with the OS error chained;
:func:`errors` turns what is left over at the end of an operation into a :class:`StorageError` too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from workflow_retention.backends.file.layout import (
    BASE,
    DIRECTORIES,
    LOCKS,
    RUNS,
    TOKEN_INDEX,
    TOKEN_INDEX_LOCK,
    Corrupt,
    is_component,
    parse_json,
)
from workflow_retention.exceptions import StorageError
from workflow_retention.report import printable

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOCK = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Opening these is not a failure of the store but a record of the wrong kind (a symlink, a socket...).
_NOT_A_FILE = {errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP}
LOCK_POLL = 0.02


class NotRegular(Corrupt):
    """A symlink, FIFO, directory, socket or device where a record should be."""


class LockTimeout(Exception):
    """Someone else held the lock for the whole wait."""


class LockBusy(Exception):
    """Someone else holds the lock right now (a lock file is never deleted then)."""


@contextlib.contextmanager
def errors(base: Path) -> Iterator[None]:
    """Translate what no caller could handle on its own into StorageError (the original chained)."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, Corrupt, LockTimeout, LockBusy) as exc:
        raise StorageError(f"file store {base}: {printable(str(exc))}") from exc


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "not a regular file"


class Store:
    """The open directories of one store, for one operation (``with Store.open(base) as store``)."""

    def __init__(self, base: Path, base_fd: int, fds: dict[str, int | None]) -> None:
        self.base = base
        self._fds: dict[str, int | None] = {BASE: base_fd, **fds}
        self._euid = os.geteuid()

    @classmethod
    @contextlib.contextmanager
    def open(cls, base: Path) -> Iterator[Store]:
        """Open the store; refuse one that is missing, not a store, or whose directories lead elsewhere."""
        try:
            base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise StorageError(f"file store {base} does not exist or is not a directory") from exc
        except OSError as exc:
            raise StorageError(f"file store {base}: cannot open it ({exc.strerror})") from exc
        fds: dict[str, int | None] = {}
        try:
            for name in DIRECTORIES:
                fds[name] = _open_directory(base, base_fd, name)
            store = cls(base, base_fd, fds)
            if fds[RUNS] is None:
                raise StorageError(f"{base} is not a PyWorkflow file store: it has no runs/ directory")
            index = store.lstat(BASE, TOKEN_INDEX)
            if index is not None and not stat.S_ISREG(index.st_mode):
                raise StorageError(f"file store {base}: {TOKEN_INDEX} is not a regular file "
                                   f"({_kind(index.st_mode)}); refusing to read or rewrite it")
            yield store
        finally:
            for fd in fds.values():
                if fd is not None:
                    os.close(fd)
            os.close(base_fd)

    # -- plumbing -----------------------------------------------------------------------

    def has(self, directory: str) -> bool:
        return self._fds.get(directory) is not None

    def _fd(self, directory: str) -> int:
        fd = self._fds.get(directory)
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, "no such directory in the store", directory)
        return fd

    def fail(self, what: str, exc: OSError) -> StorageError:
        """The StorageError for an OS error on ``what`` (chain it: ``raise store.fail(...) from exc``)."""
        return StorageError(f"file store {self.base}: {what}: {exc.strerror or exc}")

    @staticmethod
    def rel(directory: str, name: str) -> str:
        """``directory/name`` for messages (control characters escaped)."""
        return printable(name if directory == BASE else f"{directory}/{name}")

    def _name(self, directory: str, name: str) -> str:
        if not is_component(name):
            raise StorageError(f"file store {self.base}: refusing file name {printable(repr(name))} in {directory}/")
        return name

    # -- reading ------------------------------------------------------------------------

    def entries(self, directory: str, *, regular: bool = True) -> Iterator[os.DirEntry[str]]:
        """Stream a layout directory (no list of names); only regular files unless ``regular=False``."""
        fd = self._fds.get(directory)
        if fd is None:
            return
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if not regular or entry.is_file(follow_symlinks=False):
                        yield entry
        except OSError as exc:
            raise self.fail(f"cannot list {directory}/", exc) from exc

    def _open_regular(self, directory: str, name: str, flags: int, verb: str) -> int:
        """A descriptor of a regular file; FileNotFoundError, NotRegular, or StorageError (``cannot <verb> ...``)."""
        try:
            fd = os.open(self._name(directory, name), flags, dir_fd=self._fd(directory))
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno in _NOT_A_FILE:
                raise NotRegular("a symbolic link" if exc.errno == errno.ELOOP else "not a regular file") from None
            raise self.fail(f"cannot {verb} {self.rel(directory, name)}", exc) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotRegular(_kind(st.st_mode))
        return fd

    @contextlib.contextmanager
    def _reading(self, directory: str, name: str) -> Iterator[int]:
        """A read descriptor of a regular file, closed after; OS errors while reading are StorageError."""
        fd = self._open_regular(directory, name, _READ, "read")
        try:
            yield fd
        except OSError as exc:
            raise self.fail(f"cannot read {self.rel(directory, name)}", exc) from exc
        finally:
            os.close(fd)

    def read(self, directory: str, name: str) -> bytes:
        """A regular file's bytes; FileNotFoundError, NotRegular, or StorageError."""
        with self._reading(directory, name) as fd:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)

    def read_json(self, directory: str, name: str) -> object:
        """A regular file's JSON; FileNotFoundError, Corrupt (NotRegular included), or StorageError."""
        return parse_json(self.read(directory, name))

    def read_token_index(self) -> dict[str, object] | str:
        """The engine's token index (``{}`` if there is none), or why it cannot be used."""
        try:
            index = self.read_json(BASE, TOKEN_INDEX)
        except FileNotFoundError:
            return {}
        except Corrupt as exc:
            return str(exc)
        return index if isinstance(index, dict) else "not a JSON object"

    def count_lines(self, directory: str, name: str) -> int:
        """Non-blank lines of an events file (the engine's event count)."""
        with self._reading(directory, name) as fd, os.fdopen(os.dup(fd), "rb") as fh:
            return sum(1 for line in fh if line.strip())

    def lstat(self, directory: str, name: str) -> os.stat_result | None:
        """The entry's own stat (a symlink is not followed), or None if it is absent."""
        fd = self._fds.get(directory)
        if fd is None or not is_component(name):
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.fail(f"cannot stat {self.rel(directory, name)}", exc) from exc

    def exists(self, directory: str, name: str) -> bool:
        return self.lstat(directory, name) is not None

    def is_regular(self, directory: str, name: str) -> bool:
        st = self.lstat(directory, name)
        return st is not None and stat.S_ISREG(st.st_mode)

    # -- changing -----------------------------------------------------------------------

    def unlink(self, directory: str, name: str, *, size: bool = True) -> int | None:
        """Delete an entry (a symlink itself, never its target); its size (0 unless ``size``), or None if it
        was already gone."""
        st = self.lstat(directory, name) if size else None
        if size and st is None:
            return None
        try:
            os.unlink(self._name(directory, name), dir_fd=self._fd(directory))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.fail(f"cannot delete {self.rel(directory, name)}", exc) from exc
        return st.st_size if st is not None else 0

    def replace(self, directory: str, source: str, target: str) -> None:
        """Rename within one directory, replacing ``target`` (``os.replace``: atomic)."""
        fd = self._fd(directory)
        try:
            os.replace(self._name(directory, source), self._name(directory, target), src_dir_fd=fd, dst_dir_fd=fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self.fail(f"cannot rename {self.rel(directory, source)}", exc) from exc

    def rewrite(self, directory: str, name: str, data: bytes) -> None:
        """Replace a regular file by a temp file + rename, keeping its owner, group and mode."""
        fd_dir = self._fd(directory)
        name = self._name(directory, name)
        what = self.rel(directory, name)
        current = self.lstat(directory, name)
        if current is not None and not stat.S_ISREG(current.st_mode):
            raise StorageError(f"file store {self.base}: {what} is {_kind(current.st_mode)}; refusing to rewrite it")
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, _NEW, 0o600, dir_fd=fd_dir)
        except OSError as exc:
            raise self.fail(f"cannot write beside {what}", exc) from exc
        try:
            try:
                if current is not None:
                    mine = os.fstat(fd)
                    if (mine.st_uid, mine.st_gid) != (current.st_uid, current.st_gid):
                        os.fchown(fd, current.st_uid, current.st_gid)
                    os.fchmod(fd, stat.S_IMODE(current.st_mode))
                else:
                    os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=fd_dir, dst_dir_fd=fd_dir)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd_dir)
            if isinstance(exc, PermissionError) and current is not None:
                raise StorageError(f"file store {self.base}: cannot rewrite {what} keeping its owner "
                                   f"(uid {current.st_uid}, gid {current.st_gid}): {exc.strerror}") from exc
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                raise self.fail(f"cannot rewrite {what}", exc) from exc
            raise

    def write_new(self, directory: str, name: str, data: bytes, mtime: float | None = None, *,
                  exclusive: bool = False) -> None:
        """Create or truncate a regular file (the seeder's write, as the engine's ``write_text``); ``exclusive``:
        create it only (FileExistsError if the name exists: nothing is replaced)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        flags |= os.O_EXCL if exclusive else os.O_TRUNC
        fd = os.open(self._name(directory, name), flags, 0o644, dir_fd=self._fd(directory))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(f"file store {self.base}: {self.rel(directory, name)} is not a regular file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)

    def probe(self, directory: str) -> None:
        """Prove the directory can be written: create and delete a temp file in it (StorageError if not)."""
        fd_dir = self._fds.get(directory)
        if fd_dir is None:
            return
        name = f".wr-probe-{secrets.token_hex(8)}"
        try:
            os.close(os.open(name, _NEW, 0o600, dir_fd=fd_dir))
            os.unlink(name, dir_fd=fd_dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd_dir)
            where = "the base directory" if directory == BASE else f"{directory}/"
            raise StorageError(f"file store {self.base}: cannot write {where} ({exc.strerror}); "
                               "nothing was changed") from exc

    def preflight(self, directories: tuple[str, ...]) -> None:
        """Before anything changes: every directory can be written, and the shared lock and index can be used."""
        if not self.has(LOCKS):
            raise StorageError(f"file store {self.base} has no .locks/ directory (the engine creates it); "
                               "nothing was changed")
        for directory in directories:
            self.probe(directory)
        lock = self.lstat(LOCKS, TOKEN_INDEX_LOCK)
        if lock is not None and not stat.S_ISREG(lock.st_mode):
            raise StorageError(f"file store {self.base}: .locks/{TOKEN_INDEX_LOCK} is not a regular file; the "
                               "engine cannot use it either (repair it); nothing was changed")
        index = self.lstat(BASE, TOKEN_INDEX)
        if index is not None and self._euid != 0 and (
                index.st_uid != self._euid or index.st_gid not in {os.getegid(), *os.getgroups()}):
            raise StorageError(f"file store {self.base}: {TOKEN_INDEX} belongs to uid {index.st_uid}, gid "
                               f"{index.st_gid}; run the purge as that user (or root) so that the rewritten index "
                               "keeps its owner; nothing was changed")

    # -- the engine's locks ---------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float, *, create: bool = True) -> Iterator[HeldLock]:
        """Hold the engine's flock on ``.locks/<name>`` (waiting up to ``timeout`` s).

        Raises LockTimeout, NotRegular (a symlink or FIFO in its place), or
        FileNotFoundError when ``create`` is false and the file is absent.
        """
        deadline = time.monotonic() + timeout
        while True:
            fd, created = self._open_lock(name, create)
            try:
                while not _try_flock(fd):
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f".locks/{name} stayed held for {timeout}s")
                    time.sleep(LOCK_POLL)
                if not self._linked(name, fd):
                    continue  # deleted (or replaced) while we waited: lock the file that is there now
                yield HeldLock(self, name, fd, created)
                return
            finally:
                os.close(fd)  # releases the flock

    def unlink_lock(self, name: str) -> int | None:
        """Delete a lock file if nobody holds it, while holding its flock; its size, or None if it is gone.

        Raises LockBusy if someone holds it and NotRegular if it is not a regular file.
        filelock re-checks, after winning a flock, that its file is still linked,
        so a waiter on the deleted inode retries on a fresh file: exclusion holds.
        """
        try:
            fd, _created = self._open_lock(name, create=False)
        except FileNotFoundError:
            return None
        try:
            try:
                free = _try_flock(fd)
            except OSError as exc:
                raise self.fail(f"cannot delete {self.rel(LOCKS, name)}", exc) from exc
            if not free:
                raise LockBusy(name)
            return self._unlink_held(name, fd)
        finally:
            os.close(fd)

    def _unlink_held(self, name: str, fd: int) -> int | None:
        """Delete ``.locks/<name>``, locked on ``fd``, if ``fd`` is still the file there; its size."""
        try:
            if not self._linked(name, fd):
                return None
            size = os.fstat(fd).st_size
            os.unlink(name, dir_fd=self._fd(LOCKS))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.fail(f"cannot delete {self.rel(LOCKS, name)}", exc) from exc
        return size

    def _open_lock(self, name: str, create: bool) -> tuple[int, bool]:
        dir_fd = self._fd(LOCKS)
        name = self._name(LOCKS, name)
        while True:
            if create:
                try:
                    fd = os.open(name, _LOCK | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=dir_fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise self.fail(f"cannot create {self.rel(LOCKS, name)}", exc) from exc
                else:
                    self._adopt(fd)
                    return fd, True
            try:
                return self._open_regular(LOCKS, name, _LOCK, "open"), False
            except FileNotFoundError:
                if create:
                    continue  # deleted between the two opens: create it
                raise

    def _adopt(self, fd: int) -> None:
        """A lock file we created belongs to the owner of ``.locks/`` (the engine's user), not to root."""
        if self._euid != 0:
            return
        owner = os.fstat(self._fd(LOCKS))
        mine = os.fstat(fd)
        if (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
            os.fchown(fd, owner.st_uid, owner.st_gid)

    def _linked(self, name: str, fd: int) -> bool:
        held = os.fstat(fd)
        if held.st_nlink == 0:
            return False
        current = self.lstat(LOCKS, name)
        return current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)


class HeldLock:
    """A lock held by :meth:`Store.lock`; ``created`` if this operation created its file."""

    def __init__(self, store: Store, name: str, fd: int, created: bool) -> None:
        self.store, self.name, self._fd, self.created = store, name, fd, created

    def unlink(self) -> int | None:
        """Delete the lock file while holding it (waiters then retry on a fresh file); its size."""
        return self.store._unlink_held(self.name, self._fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    return True


def _open_directory(base: Path, base_fd: int, name: str) -> int | None:
    try:
        return os.open(name, _DIR, dir_fd=base_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StorageError(f"file store {base}: {name}/ is a symlink or leads outside the store (or is not a "
                               "directory); refusing to read or delete through it") from exc
        raise StorageError(f"file store {base}: cannot open {name}/ ({exc.strerror})") from exc
