"""The one error type users see: a single line naming the file, the key and what was expected."""

from __future__ import annotations

from typing import Optional


class InputError(Exception):
    """Bad input. The CLI prints `str(error)` on one line and exits 2, having changed nothing."""

    def __init__(self, source: str, key: Optional[str], expected: str):
        self.source, self.key, self.expected = source, key, expected
        parts = [str(source)] + ([key] if key else []) + [" ".join(expected.split())]
        super().__init__(": ".join(parts))
