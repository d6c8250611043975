"""Allowed ranges of numbers, checked before any work starts, each refusal one sentence.

Owns `Range` (bounds, open or closed, plus "finite" for every float: NaN and infinity are never a setting)
and the few bounds several places share (`INT64_MAX`, `MAX_THREADS`, `MAX_BATCH`, `MAX_NEW_TOKENS_CAP`, and
the input limits `MAX_LINE_BYTES` and `MAX_CHOICES`).
`config.py` gives each config key a Range and `cli.py` each numeric flag; both phrase a refusal the same
way: "'train.beta1' must be a number in [0, 1), got 1.5" / "--val-fraction must be a number in (0, 1), got 1.0".
Imports nothing heavy (no torch): the CLI parser uses it before deciding what to load.
Does not own what the numbers mean, or cross-field checks (`config.validate` does those).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
MAX_THREADS = 4096  # torch.set_num_threads beyond this is a typo, and each thread costs a stack
MAX_BATCH = 2**24  # rows of one batch; more is a typo long before it is a machine
MAX_NEW_TOKENS_CAP = 100_000  # documented in the README; more is almost surely a typo
MAX_LINE_BYTES = 4 << 20  # one line of a JSON Lines input (eval --choices, prepare chat): refused before it is held
MAX_CHOICES = 1024  # choices of one multiple-choice question (each is a forward pass): benchmarks have 2 to 10


@dataclass(frozen=True)
class Range:
    """lo <= x <= hi (or < where open); None is unbounded. Floats must also be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def contains(self, x: float) -> bool:
        if not self.integer and not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))

    def describe(self) -> str:
        """The predicate, as it follows a name: 'must be positive and at most 4,096', 'must be a number in [0, 1)'."""
        lo, hi = self.lo, self.hi
        if self.integer:
            if lo == 0 and not self.lo_open:
                low = "must not be negative"
            elif (lo == 1 and not self.lo_open) or (lo == 0 and self.lo_open):
                low = "must be positive"
            else:
                low = f"must be at least {_num(lo)}" if lo is not None else "must be a whole number"
            return low + (f" and at most {_num(hi)}" if hi is not None and hi < INT64_MAX else "")
        if lo is not None and hi is not None:
            return f"must be a number in {'(' if self.lo_open else '['}{_num(lo)}, {_num(hi)}{')' if self.hi_open else ']'}"
        if lo is not None:
            if lo == 0:
                return "must be a finite number greater than 0" if self.lo_open else "must be a finite number, not negative"
            return f"must be a finite number {'greater than' if self.lo_open else 'of at least'} {_num(lo)}"
        if hi is not None:
            return f"must be a finite number {'less than' if self.hi_open else 'of at most'} {_num(hi)}"
        return "must be a finite number"

    def refusal(self, name: str, value: object) -> str:
        return f"{name} {self.describe()}, got {value!r}"


def _num(x: float | None) -> str:
    if x is None:
        return ""
    if float(x).is_integer() and abs(x) < 1e16:
        return f"{int(x):,}"
    return f"{x:g}"


def ints(lo: int, hi: int = INT64_MAX) -> Range:
    return Range(lo, hi, integer=True)


def floats(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Range:
    return Range(lo, hi, lo_open, hi_open)


POSITIVE = floats(0.0, lo_open=True)
NOT_NEGATIVE = floats(0.0)
UNIT_OPEN = floats(0.0, 1.0, hi_open=True)  # [0, 1): dropout, betas, momentum
