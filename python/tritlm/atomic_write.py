"""Files that appear whole or not at all: a converted model, a benchmark's figures."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def replaced_at_end(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` to write to, renamed over ``path`` once the with-block
    succeeds and removed if it fails (Ctrl-C too).

    Why: the writing comes after minutes of work (converting, measuring), so a destination that
    cannot be written must fail at once (the temporary file is created on entry), and a run that
    stops half-way must leave neither a half-written file nor an emptied one under ``path``."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                   prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None  # name the user's path, not the temporary one
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the mode a plain open() would have given, not mkstemp's 0600
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
