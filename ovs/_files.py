"""Writing files so that a reader never sees a half-written one."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], *, fsync: bool = False) -> None:
    """write(tmp) fills a temporary file in path's folder, which is then renamed to path: an
    interrupted or failed write never leaves a truncated file at path (the temporary file is
    removed and the error raised). fsync: flush the data to disk before the rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.close(fd)
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
