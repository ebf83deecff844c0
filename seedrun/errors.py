"""The one error type users see: a single line naming the file, the key and what was expected."""

from __future__ import annotations

from typing import Optional


class InputError(Exception):
    """Bad input. The CLI prints `str(error)` on one line and exits 2, having changed nothing."""

    def __init__(self, source: str, key: Optional[str], expected: str):
        self.source, self.key, self.expected = source, key, expected
        parts = [str(source)] + ([key] if key else []) + [" ".join(expected.split())]
        super().__init__(": ".join(parts))


def database_error(url: str, exc: BaseException) -> InputError:
    """A database that cannot be opened (unknown kind, no driver, server unreachable) as bad input on
    --db, its password hidden and the driver's message cut to its first line."""
    try:
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: show it as given
        shown = url
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return InputError("--db", shown, f"cannot open the run database: {first_line}")
