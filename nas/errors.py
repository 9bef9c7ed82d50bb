"""Errors that describe bad user input.

Every problem with a file or value that a user supplied (config, space YAML, arch JSON, latency
table, data file) is raised as :class:`NasInputError`. The CLI turns it into exactly one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class NasInputError(ValueError):
    """A user-supplied input is malformed.

    Args:
        message: what is wrong and how to fix it (one sentence, no newline).
        source: the file (or other origin) the bad value came from, if known.
        field: the dotted field / label that is wrong, if known.
    """

    def __init__(self, message: str, source: str | None = None, field: str | None = None):
        self.message = message.replace("\n", " ")
        self.source = source
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Returns the error as a single line: `source: field: message`."""
        parts = [p for p in (self.source, self.field) if p]
        return ": ".join(parts + [self.message])

    def with_source(self, source: str) -> "NasInputError":
        """Returns a copy of this error that names `source` (keeps an existing source)."""
        return NasInputError(self.message, self.source or source, self.field)
