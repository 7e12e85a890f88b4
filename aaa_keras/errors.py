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


class DamagedFile(UserError):
    """A file the project wrote and reads back is missing, empty or unreadable: the message names
    the file, what is wrong and what to do (rebuild the index, re-run the stage)."""


class RunFailure(Exception):
    """A run stopped for a reason outside the user's input: a full or read-only disk, a
    non-finite loss. The CLI prints its message as one ``Error:`` line and exits with
    status 1; what was written before it (earlier stages, the last good checkpoint) is intact
    and the message names it.

    ``exit_now``: the process must end without Python's finalisation (the
    CLI calls ``os._exit``): after a failed HDF5 write h5py keeps a file it
    can neither flush nor close, and finalising it is a segmentation fault.
    """

    def __init__(self, message: str, exit_now: bool = False):
        super().__init__(message)
        self.exit_now = exit_now
