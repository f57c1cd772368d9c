"""Cache budgets: parse ``--cache-budget`` strings into bytes per device type."""

from __future__ import annotations

import re
from collections.abc import Callable

BUDGET_DEVICES = ("cpu", "cuda", "mps", "xpu")
MAX_BUDGET = 1 << 50  # 1 PiB: more is a typo, not a machine
BUDGET_EXAMPLES = "'8GiB', '512MiB', '8000000', '50%' or 'cpu=4GiB,cuda=80%'"
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
    "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_AMOUNT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(%|[a-z]*)")

Amount = tuple[str, float]  # ("bytes", n) or ("percent", p)
MemoryOf = Callable[[str], int | None]


def check_budget(text: str) -> list[tuple[str | None, Amount]]:
    """Parse a cache budget without asking any device; raises ValueError.

    Returns ``(device or None for a bare value, amount)`` entries; use it to
    validate an option where torch must not be imported (the server).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty cache budget; expected {BUDGET_EXAMPLES}")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1 and "=" not in parts[0]:
        return [(None, _parse_amount(parts[0], text))]
    entries: list[tuple[str | None, Amount]] = []
    for part in parts:
        device, sep, amount = (x.strip() for x in part.partition("="))
        if not sep:
            raise _budget_error(text, f"{part!r} names no device: give every entry of a "
                                      "list as DEVICE=SIZE")
        device = device.lower()
        if ":" in device:
            raise _budget_error(text, f"budgets are per device type: use "
                                      f"{device.partition(':')[0]!r}, not {device!r}")
        if device not in BUDGET_DEVICES:
            raise _budget_error(text, f"unknown device {device!r} (expected one of "
                                      f"{', '.join(BUDGET_DEVICES)})")
        if any(d == device for d, _ in entries):
            raise _budget_error(text, f"device {device!r} is given twice")
        entries.append((device, _parse_amount(amount, text)))
    return entries


def parse_budget(text: str, *, memory: MemoryOf | None = None) -> dict[str, int]:
    """Bytes per device type from a cache-budget string.

    Accepted: bytes with an optional unit (``8000000``, ``8GB`` = 8*10^9,
    ``8GiB`` or ``8G`` = 8*2^30, ``512MiB``, ``1.5GiB``), a percentage of the
    device's memory (``50%``), or a per-device list (``cpu=4GiB,cuda=80%``).
    A bare value applies to cpu and, when the machine has one, cuda.
    ``memory(device)`` gives a device type's total bytes or None when absent
    (default :func:`engine.session.device_memory`; it imports torch only to
    ask about cuda). A percentage of an absent device is left out.
    """
    entries = check_budget(text)
    if memory is None:
        from engine.session import device_memory as memory  # lazily: session imports us
    if entries[0][0] is None:
        amount = entries[0][1]
        entries = [("cpu", amount)]
        if memory("cuda") is not None:
            entries.append(("cuda", amount))
    budgets: dict[str, int] = {}
    for device, (kind, value) in entries:
        assert device is not None
        if kind == "bytes":
            budgets[device] = int(value)
            continue
        total = memory(device)
        if total is None:
            if device == "cpu":
                raise _budget_error(text, "cannot tell how much memory this machine has; "
                                          "give the cpu budget in bytes")
            continue  # e.g. cuda=80% on a machine without a GPU: nothing to bound
        budgets[device] = int(total * value / 100)
    return budgets


def _parse_amount(amount: str, text: str) -> Amount:
    match = _AMOUNT.fullmatch(amount.strip().lower())
    if match is None and amount.strip().startswith("-"):
        raise _budget_error(text, f"{amount!r} is negative")
    if match is None:
        raise _budget_error(text, f"{amount!r} is not a size")
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        if number > 100:
            raise _budget_error(text, f"{amount!r} is over 100%")
        return ("percent", number)
    if unit not in _UNITS:
        raise _budget_error(text, f"unknown unit {match.group(2)!r} (use B, KB, MB, GB, TB "
                                  "for powers of 1000 or KiB, MiB, GiB, TiB for 1024)")
    nbytes = number * _UNITS[unit]
    if nbytes > MAX_BUDGET:
        raise _budget_error(text, f"{amount!r} is more than 1 PiB")
    return ("bytes", nbytes)


def _budget_error(text: str, reason: str) -> ValueError:
    return ValueError(f"bad cache budget {text!r}: {reason}; expected e.g. {BUDGET_EXAMPLES}")
