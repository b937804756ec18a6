"""The archive primitives of the file store: a batch's files read raw before the purge deletes them, and
archived files written back (docs/archive.md).

A run's files are the ones the cascade (:mod:`.cascade`) deletes with it: ``runs/<id>.json`` and
``runs/<id>.cancel``, ``events/<id>.jsonl``, its ``steps/`` files (by the run_id inside), its ``hooks/``
files (``<id>__<hook_id>.json``, by the longest ``__``-prefix naming an existing run; a legacy
``<hook_id>.json`` by its content), its step checkpoints (``checkpoints/<key>.json`` owned by it,
:func:`~workflow_retention.planning.key_owner`), its per-run lock files and checkpoint locks in ``.locks/``,
and its entries in ``_token_index.json``. Each file is archived as ``{"name", "data" (bytes), "mtime"}``;
token-index entries as ``{"token", "value"}``. ``steps/``, ``hooks/`` and ``checkpoints/`` are listed once
per batch (the layout has no index by run).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workflow_retention.backends.file.client import NotRegular, Store, errors
from workflow_retention.backends.file.layout import (
    BASE,
    CHECKPOINT_PREFIX,
    CHECKPOINTS,
    EVENTS,
    HOOK_SEPARATOR,
    HOOKS,
    JSON,
    LOCK_SUFFIX,
    LOCKS,
    RUNS,
    STEPS,
    TOKEN_INDEX,
    TOKEN_INDEX_LOCK,
    Corrupt,
    events_file,
    flag_file,
    lock_file,
    marker_file,
    parse_json,
    run_file,
    run_locks,
    step_owner,
)
from workflow_retention.backends.file.purge import read_run
from workflow_retention.exceptions import StorageError
from workflow_retention.planning import RunRef, key_owner, key_prefixes
from workflow_retention.report import printable

#: Archive kinds: the store's folders (``.`` holds the token index), in the order they are restored (the
#: run file last: a restored run is complete before the engine or a purge can find it).
FOLDERS = (EVENTS, STEPS, HOOKS, CHECKPOINTS, LOCKS, RUNS)
TOKENS = "token_index"


def _file(store: Store, directory: str, name: str) -> dict[str, Any] | None:
    st = store.lstat(directory, name)
    if st is None:
        return None
    try:
        data = store.read(directory, name)
    except (FileNotFoundError, NotRegular):
        return None
    return {"name": name, "data": data, "mtime": st.st_mtime}


def gather(base: Path, run_ids: Sequence[str], lock_timeout: float) -> dict[str, tuple[RunRef, dict[str, list[Any]]]]:
    """Each run of ``run_ids`` that has a run file, with its files per folder, read without locks."""
    with errors(base), Store.open(base) as store:
        refs = {i: ref for i in dict.fromkeys(run_ids) if (ref := read_run(store, i)) is not None
                and ref.unreadable is None}
        if not refs:
            return {}
        found: dict[str, dict[str, list[Any]]] = {i: {} for i in refs}

        def add(run_id: str, folder: str, record: dict[str, Any] | None) -> None:
            if record is not None:
                found[run_id].setdefault(folder, []).append(record)

        def exists(run_id: str) -> bool:
            name, marker = run_file(run_id), marker_file(run_id)
            return run_id in refs or any(n is not None and store.exists(RUNS, n) for n in (name, marker))

        for run_id in refs:
            name = run_file(run_id)
            assert name is not None
            add(run_id, RUNS, _file(store, RUNS, name))
            add(run_id, RUNS, _file(store, RUNS, flag_file(run_id)))
            if store.has(EVENTS):
                add(run_id, EVENTS, _file(store, EVENTS, events_file(run_id)))
            if store.has(LOCKS):
                for lock in run_locks(run_id):
                    add(run_id, LOCKS, _file(store, LOCKS, lock))
        if store.has(STEPS):
            for entry in store.entries(STEPS):
                if entry.name.endswith(JSON):
                    try:
                        step_run = step_owner(store.read_json(STEPS, entry.name))
                    except (FileNotFoundError, Corrupt):
                        continue
                    if step_run in refs:
                        add(step_run, STEPS, _file(store, STEPS, entry.name))
        if store.has(HOOKS):
            for entry in store.entries(HOOKS):
                if not entry.name.endswith(JSON):
                    continue
                key = entry.name[: -len(JSON)]
                hook_run = key_owner(key, exists, HOOK_SEPARATOR) if HOOK_SEPARATOR in key else None
                if hook_run is None:  # a legacy hooks/<hook_id>.json: its content names the run
                    try:
                        data = store.read_json(HOOKS, entry.name)
                    except (FileNotFoundError, Corrupt):
                        continue
                    named = data.get("run_id") if isinstance(data, dict) else None
                    hook_run = named if isinstance(named, str) else None
                if hook_run is not None and hook_run in refs:
                    add(hook_run, HOOKS, _file(store, HOOKS, entry.name))
        if store.has(CHECKPOINTS):
            for entry in store.entries(CHECKPOINTS):
                key = entry.name[: -len(JSON)]
                if not entry.name.endswith(JSON) or (cp_run := key_owner(key, exists)) is None or cp_run not in refs:
                    continue
                add(cp_run, CHECKPOINTS, _file(store, CHECKPOINTS, entry.name))
                if store.has(LOCKS):
                    add(cp_run, LOCKS, _file(store, LOCKS, lock_file(CHECKPOINT_PREFIX, key)))
        index = store.read_token_index()
        if isinstance(index, dict):
            for token, value in index.items():
                if isinstance(value, str) and (token_run := key_owner(value, exists)) is not None \
                        and token_run in refs:
                    found[token_run].setdefault(TOKENS, []).append({"token": token, "value": value})
    return {i: (refs[i], found[i]) for i in refs}


def _owned(run_id: str, folder: str, record: Any) -> bool:
    """Whether ``record`` (an archived file of ``folder``, or a token-index entry) can belong to ``run_id``: its
    name is one of the run's own (steps and legacy hooks: the run_id inside), so restore never writes a file
    of another run."""
    if folder == TOKENS:
        return isinstance(record, dict) and isinstance(record.get("token"), str) \
            and isinstance(record.get("value"), str) and run_id in key_prefixes(record["value"])
    if not (isinstance(record, dict) and isinstance(record.get("name"), str) and isinstance(record.get("data"), bytes)
            and isinstance(record.get("mtime"), (int, float, type(None)))):
        return False
    name: str = record["name"]
    key = name[: -len(JSON)] if name.endswith(JSON) else None
    if folder == RUNS:
        return name in (run_file(run_id), flag_file(run_id))
    if folder == EVENTS:
        return name == events_file(run_id)
    if folder == LOCKS:
        checkpoint = name[len(CHECKPOINT_PREFIX): -len(LOCK_SUFFIX)] if name.startswith(CHECKPOINT_PREFIX) \
            and name.endswith(LOCK_SUFFIX) else None
        return name in run_locks(run_id) or (checkpoint is not None and run_id in key_prefixes(checkpoint))
    if folder == CHECKPOINTS:
        return key is not None and run_id in key_prefixes(key)
    if key is None:
        return False
    if folder == HOOKS and run_id in key_prefixes(key, HOOK_SEPARATOR):
        return True
    try:  # steps/<step_id>.json and a legacy hooks/<hook_id>.json name their run inside
        data = parse_json(record["data"])
    except Corrupt:
        return False
    return isinstance(data, dict) and data.get("run_id") == run_id


def restore(base: Path, lines: list[dict[str, Any]], lock_timeout: float) -> None:
    """Write the archived files of ``lines`` back (each with its mtime), run by run: each file created new
    (a name that exists is never replaced: the run is refused), the run file last and only if no run file or
    purge marker of that id exists, token-index entries merged under the engine's index lock. A file that is
    not the run's own refuses the run before anything is written; a failure midway removes what the run had
    written (a run is restored whole or not at all)."""
    with errors(base), Store.open(base) as store:
        _check_keys(base, store, lines)
        for line in lines:
            _restore_run(base, store, line, lock_timeout)


def _check_keys(base: Path, store: Store, lines: list[dict[str, Any]]) -> None:
    """Refuse (before anything is written) a run whose idempotency key a live run took since it was deleted: the
    engine finds a run by its key by reading the run files, and would find either."""
    keys: dict[str, str] = {}
    for line in lines:
        for record in line["records"].get(RUNS, ()):
            if isinstance(record, dict) and record.get("name") == run_file(line["run_id"]):
                try:
                    data = parse_json(record["data"])
                except (Corrupt, TypeError):
                    continue
                key = data.get("idempotency_key") if isinstance(data, dict) else None
                if isinstance(key, str):
                    keys[key] = line["run_id"]
    if not keys:
        return
    for entry in store.entries(RUNS):
        if not entry.name.endswith(JSON):
            continue
        try:
            data = store.read_json(RUNS, entry.name)
        except (FileNotFoundError, Corrupt):
            continue
        key = data.get("idempotency_key") if isinstance(data, dict) else None
        if isinstance(key, str) and key in keys:
            raise StorageError(f"cannot restore {keys[key]} into {base}: its idempotency key is held by live run "
                               f"file runs/{printable(entry.name)}; nothing restored")


def _restore_run(base: Path, store: Store, line: dict[str, Any], lock_timeout: float) -> None:
    run_id = line["run_id"]
    records = line["records"]
    unknown = set(records) - {*FOLDERS, TOKENS}
    if unknown:
        raise StorageError(f"cannot restore {run_id} into {base}: unknown folder(s) {sorted(unknown)}")
    name, marker = run_file(run_id), marker_file(run_id)
    if name is None or marker is None or store.exists(RUNS, name) or store.exists(RUNS, marker):
        raise StorageError(f"cannot restore {run_id!r} into {base}: its run file exists (or its id is "
                           "not one file name)")
    for folder, rows in records.items():
        for record in rows:
            if not _owned(run_id, folder, record):
                shown = record.get("name", record.get("token")) if isinstance(record, dict) else None
                raise StorageError(f"cannot restore {run_id} into {base}: the archive holds {folder} entry "
                                   f"{str(shown)[:200]!r}, which is not this run's: nothing of it written")
            if folder != TOKENS and not store.has(folder):
                raise StorageError(f"cannot restore {run_id} into {base}: it has no {folder}/ directory")
    created: list[tuple[str, str]] = []
    tokens: list[str] = []
    try:
        for folder in FOLDERS:
            for record in sorted(records.get(folder, ()), key=lambda r: r["name"] == name):
                try:
                    store.write_new(folder, record["name"], record["data"], record.get("mtime"), exclusive=True)
                except FileExistsError:
                    raise StorageError(f"cannot restore {run_id} into {base}: {store.rel(folder, record['name'])} "
                                       "exists (not replaced); nothing of the run written") from None
                except BaseException:
                    created.append((folder, record["name"]))  # created (O_EXCL) before the failure: removed below
                    raise
                created.append((folder, record["name"]))
            if folder == LOCKS and records.get(TOKENS):  # before the run file: the run appears complete
                tokens = _merge_tokens(base, store, records[TOKENS], lock_timeout)
    except BaseException:
        for folder, written in reversed(created):
            with contextlib.suppress(StorageError):
                store.unlink(folder, written, size=False)
        if tokens:
            with contextlib.suppress(StorageError, OSError), store.lock(TOKEN_INDEX_LOCK, lock_timeout):
                index = store.read_token_index()
                if isinstance(index, dict):
                    for token in tokens:
                        index.pop(token, None)
                    store.rewrite(BASE, TOKEN_INDEX, json.dumps(index, indent=2).encode())
        raise


def _merge_tokens(base: Path, store: Store, entries: list[dict[str, Any]], lock_timeout: float) -> list[str]:
    """Add the run's token-index entries that are absent (under the engine's index lock); the tokens added."""
    with store.lock(TOKEN_INDEX_LOCK, lock_timeout):
        index = store.read_token_index()
        if not isinstance(index, dict):
            raise StorageError(f"cannot restore hook tokens into {base}: {TOKEN_INDEX} is unusable ({index})")
        added = [e["token"] for e in entries if e["token"] not in index]
        if added:
            index.update({e["token"]: e["value"] for e in entries if e["token"] in added})
            store.rewrite(BASE, TOKEN_INDEX, json.dumps(index, indent=2).encode())
    return added
