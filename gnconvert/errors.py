"""One exception type for every failure a user can act on.

The CLI turns a GnconvertError into a single line on stderr and a non-zero exit;
anything else is a bug and keeps its traceback.
"""


class GnconvertError(Exception):
    """A failure with a message that names the thing and says what to do."""

    exit_code = 1


class UsageError(GnconvertError):
    """The user asked for something that cannot exist (unknown id, bad option)."""

    exit_code = 2


class DownloadError(GnconvertError):
    """Fetching a file failed; nothing corrupt was left in the cache."""


class CheckpointError(GnconvertError):
    """A checkpoint file is unsafe, malformed, or not what it claims to be."""


class MappingError(CheckpointError):
    """Blobs and the model disagree: missing, unexpected, duplicate or mis-shaped."""


class Interrupted(GnconvertError):
    """Ctrl-C: what was finished is kept, and the message says how to continue."""

    exit_code = 130


class ParityError(GnconvertError):
    """The converted model does not reproduce Detectron's reference outputs."""
