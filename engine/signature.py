"""Node signatures: the cache key of a node's outputs (see :mod:`engine.cache`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def signature(type_id: str, version: int, constants: dict[str, Any], fingerprint: Any,
              upstream: list[tuple[str, str, int]]) -> str:
    """A stable hash of everything a node's outputs depend on.

    Incremental: the node's own part (type, version, constants, fingerprint) is
    encoded once per distinct value and remembered, so a loop's copies of a body
    cost only the hash of their upstream signatures."""
    key = _head_key(type_id, version, constants, fingerprint)
    head = _HEADS.get(key) if key is not None else None
    if head is None:
        head = json.dumps([type_id, version, constants, fingerprint], sort_keys=True,
                          default=repr, separators=(",", ":"))
        if key is not None:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[key] = head
    # upstream is (input name, hex signature, int) triples: repr is unambiguous, and
    # JSON never holds a raw NUL, so the two parts cannot run into each other
    payload = f"{head}\0{upstream!r}"
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


_HEADS: dict[tuple[Any, ...], str] = {}
_HEADS_MAX = 65_536
_SCALARS = (str, int, bool, type(None))


def _head_key(type_id: str, version: int, constants: dict[str, Any], fingerprint: Any
              ) -> tuple[Any, ...] | None:
    """A memo key for a node's own part when it is small scalars: each value with its
    exact type (``1``, ``1.0`` and ``True`` are equal in Python, not here; floats by
    repr, so -0.0 and 0.0 differ); None otherwise."""
    if type(fingerprint) not in _SCALARS:
        return None
    items: list[Any] = [type_id, version, type(fingerprint), fingerprint]
    for name, value in constants.items():
        kind = type(value)
        if kind is float:
            value = repr(value)
        elif kind not in _SCALARS or (kind is str and len(value) > 256):
            return None
        items.append((name, kind, value))
    return tuple(items)
