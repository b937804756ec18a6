"""The processes on this machine, by command line: how targets find their server's process ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def command_lines() -> Iterator[tuple[int, list[str]]]:
    """(pid, arguments) of every process whose command line can be read."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        yield int(cmdline.parent.name), [a.decode(errors="replace") for a in args]
