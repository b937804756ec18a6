"""Run pyworkflow-engine 0.4.0's own ``delete_old_runs`` on a file or SQLite store, as its hourly task does.

    python docs/examples/pyworkflow_purge.py file:///tmp/store 30

Used by the README's "Adopting workflow-retention on a store pyworkflow has
already purged" walk-through, to produce a store with the baseline's orphans.
Needs pyworkflow-engine (installed by the ``test`` extra).

On SQLite, pyworkflow's purge fails whenever an expired parent run has a child
that survives (its final DELETE violates the parent reference: the engine's
own IntegrityError). That is the baseline's bug, not this script's: the script
says so and exits 1, and the store keeps whatever the failed purge left.
"""

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit


async def main(url: str, days: int) -> None:
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme == "file":
        from pyworkflow.storage.file import FileStorageBackend

        storage = FileStorageBackend(base_path=path)
    elif parts.scheme == "sqlite":
        from pyworkflow.storage.sqlite import SQLiteStorageBackend

        storage = SQLiteStorageBackend(db_path=path)
    else:
        raise SystemExit("file:// or sqlite:// only")
    await storage.connect()
    try:
        deleted = await storage.delete_old_runs(datetime.now(UTC) - timedelta(days=days))
        print(f"pyworkflow-engine's delete_old_runs reported {deleted} runs deleted")
    except Exception as exc:
        if type(exc).__name__ != "IntegrityError":
            raise
        print(f"pyworkflow-engine's own delete_old_runs failed: {type(exc).__name__}: {exc}\n"
              "(an expired parent run has a child that survives; pyworkflow deletes the parent anyway and "
              "the engine's foreign key refuses it. workflow-retention keeps such a parent until its child goes.)",
              file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        await storage.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
