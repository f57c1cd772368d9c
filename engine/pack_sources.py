"""What a custom-nodes folder's packs are made of on disk, as one fingerprint.

The server and each worker import the packs on their own (a worker restarted after a
hard interrupt or a crash imports them again): :func:`sources_fingerprint` tells the
server that a worker loaded packs whose files changed since the server did, so it can
load them again and keep one node list for both (server.runtime).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: files whose change can change what a pack registers
SOURCE_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".toml")
#: folders never read for a pack's sources
SKIPPED_DIRS = {"__pycache__", "node_modules", ".git", "web", "js"}
#: at most this many files are looked at (a pack folder full of data stays cheap)
MAX_FILES = 20_000


#: a data file (``.json``, ``.yaml``, ...) up to this size is hashed by its content: a
#: pack that rewrites its settings file at each import, unchanged, changes nothing
CONTENT_HASH_BYTES = 1 << 20
#: at most this much data is read in all per fingerprint (every worker start takes one):
#: past it, data files count by size and modification time as code does
CONTENT_BUDGET_BYTES = 16 << 20


def sources_fingerprint(directory: Path) -> str:
    """A hash of every source file of the packs in ``directory`` (what the registry
    loads: packages and ``.py`` files not starting with ``.`` or ``_``): code by path,
    size and modification time, small data files by content."""
    digest = hashlib.sha256()
    seen = 0
    budget = CONTENT_BUDGET_BYTES
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ""
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        files = [entry] if entry.suffix == ".py" and entry.is_file() else []
        if entry.is_dir():
            for dirpath, dirnames, filenames in os.walk(entry):
                dirnames[:] = sorted(d for d in dirnames
                                     if d not in SKIPPED_DIRS and not d.startswith("."))
                files.extend(Path(dirpath) / f for f in sorted(filenames)
                             if f.endswith(SOURCE_SUFFIXES))
                if len(files) + seen > MAX_FILES:
                    break
        for path in files[:max(0, MAX_FILES - seen)]:
            seen += 1
            try:
                stat = path.stat()
                if path.suffix != ".py" and stat.st_size <= min(CONTENT_HASH_BYTES, budget):
                    budget -= stat.st_size
                    stamp = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    stamp = f"{stat.st_size}\0{stat.st_mtime_ns}"
            except OSError:
                continue
            digest.update(f"{path.relative_to(directory)}\0{stamp}\n".encode(
                "utf-8", "surrogateescape"))
    return digest.hexdigest()
