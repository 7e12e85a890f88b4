"""The one exception type for mistakes a user can fix.

The CLI prints a ``UserError`` as a single ``Error: ...`` line and exits with
status 2, never a traceback. Library code raises it (or a subclass) when the
input is wrong: a file name that does not parse, an image that does not decode,
a run directory that belongs to another dataset. The message says what was
received, what was expected and how to fix it.
"""


class UserError(Exception):
    """An error caused by user input; its message is shown as is."""


class DatasetError(UserError):
    """A dataset directory is missing, empty or malformed."""


class RunDirError(UserError):
    """A run directory is missing a stage or belongs to another configuration."""
