"""Errors that describe bad user input.

Every problem with a file or value that a user supplied (config, space YAML, arch JSON, latency
table, data file) is raised as :class:`NasInputError`. The CLI turns it into exactly one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


def printable_line(text: str, limit: int = 300) -> str:
    """Returns `text` on one line: control and line-separator characters escaped, long parts cut."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return out if len(out) <= limit else out[:limit - 3] + "..."


class NasInputError(ValueError):
    """A user-supplied input is malformed.

    Args:
        message: what is wrong and how to fix it (one sentence, no newline).
        source: the file (or other origin) the bad value came from, if known.
        field: the dotted field / label that is wrong, if known.
    """

    def __init__(self, message: str, source: str | None = None, field: str | None = None):
        self.message = printable_line(str(message).replace("\n", " "), 1000)
        self.source = None if source is None else printable_line(source)
        self.field = None if field is None else printable_line(field)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Returns the error as a single line: `source: field: message`."""
        parts = [p for p in (self.source, self.field) if p]
        return ": ".join(parts + [self.message])

    def with_source(self, source: str) -> "NasInputError":
        """Returns a copy of this error that names `source` (keeps an existing source)."""
        return NasInputError(self.message, self.source or source, self.field)


class ExportCheckError(RuntimeError):
    """An exported model does not compute what the trained model computes (exit code 1).

    Args:
        message: the failed check and the layer that diverges most (one line).
    """

    def __init__(self, message: str):
        self.message = printable_line(str(message).replace("\n", " "), 1000)
        super().__init__(self.message)
