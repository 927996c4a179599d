"""Small shared helpers: atomic writes, seeding.

Writers never leave a half-written output: a file is written to a temporary sibling and moved into
place with ``os.replace``; a folder is built in a temporary sibling folder that replaces the old one
only when everything succeeded. A destination that cannot be written (read-only folder, a file where
a folder is expected, a full disk, a file-size limit) raises :class:`OutputError`, whose message names
the destination and says that nothing there was changed.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# errno values that always concern the destination being written, never an input being read.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


class OutputError(OSError):
    """A destination that cannot be written; the message names it and what was left there.

    ``path`` is the destination (file or folder), ``reason`` the operating system's words, ``errno``
    the original error number.
    """

    def __init__(self, message: str, *, path: str | Path = "", reason: str = "", errno_: int | None = None) -> None:
        super().__init__(message)
        self.path = str(path)
        self.reason = reason
        self.errno = errno_


def _reason(err: OSError) -> str:
    """The operating system's words for ``err``, with the file it names (if any)."""
    if isinstance(err, OutputError):
        return err.reason
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename:
        # a regular file where a folder is expected: name that file
        p = Path(os.fspath(err.filename))
        for q in (p, *p.parents):
            if q.exists():
                if not q.is_dir():
                    return f"{q} is a file, not a folder"
                break
    words = err.strerror or str(err) or type(err).__name__
    return f"{words}: {err.filename}" if err.filename else words


def _left(path: Path) -> str:
    """What a failed write left at ``path`` (it never leaves anything half-written)."""
    return f"{path} is unchanged" if path.exists() else f"nothing was written to {path}"


def _not_writable(path: Path, what: str, err: OSError) -> OutputError:
    reason = _reason(err)
    name = os.fspath(err.filename) if err.filename is not None else ""
    if name and os.path.basename(name).startswith(f".{path.name}."):   # our temporary sibling: name its folder
        reason = f"{err.strerror or err}: {os.path.dirname(name)}"
    return OutputError(f"cannot write {what} {path}: {reason}; {_left(path)}", path=path, reason=reason,
                       errno_=err.errno)


def _umask_mode(mode: int) -> int:
    """``mode`` less the process umask (what ``open``/``mkdir`` would give; mkstemp/mkdtemp give 0600/0700)."""
    try:   # Linux: read it without changing it (os.umask sets the process-wide mask for a moment)
        with open("/proc/self/status", encoding="ascii") as fh:
            mask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return mode & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Raises :class:`OutputError` naming ``path`` when it cannot be written; ``path`` is then unchanged
    and no temporary file is left.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _not_writable(path, "file", err) from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:   # keep the mode of the file replaced, else the usual one for a new file
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = _umask_mode(0o666)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _not_writable(path, "file", err) from err
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def _is_write_error(err: BaseException, tmp: Path) -> bool:
    """Whether an error raised while filling ``tmp`` is about writing there (not about reading an input)."""
    if isinstance(err, OutputError):
        return True
    if not isinstance(err, OSError):
        return False
    if err.errno in _WRITE_ERRNOS:
        return True
    for name in (err.filename, err.filename2):
        if name is not None and os.path.abspath(os.fspath(name)).startswith(str(tmp.resolve())):
            return True
    return False


def _add_note(err: BaseException, note: str) -> None:
    if hasattr(err, "add_note"):   # Python >= 3.11
        err.add_note(note)


@contextmanager
def atomic_output_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out``, on error it is removed.

    Nothing half-written is ever left at ``out``: a failed or interrupted run leaves either the
    previous ``out`` untouched or no ``out`` at all. Errors about the destination (not writable, disk
    full, file-size limit) are raised as :class:`OutputError` naming ``out``; any other error or an
    interruption (``KeyboardInterrupt``) is re-raised as it is, with a note saying ``out`` is unchanged.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write output folder {out}: it exists and is not a folder; {out} is unchanged",
                          path=out, reason="not a folder", errno_=errno.ENOTDIR)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        os.chmod(tmp, _umask_mode(0o777))
    except OSError as err:
        raise _not_writable(out, "output folder", err) from err
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_error(err, tmp):
            raise OutputError(f"cannot write output folder {out}: {_reason(err)}; the partial output was removed "
                              f"and {_left(out)}", path=out, reason=_reason(err),
                              errno_=getattr(err, "errno", None)) from err
        _add_note(err, f"the partial output was removed and {_left(out)}")
        raise
    old = None
    try:
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException as err:
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)   # put the previous output back
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot replace output folder {out}: {_reason(err)}; the new output was removed "
                              f"and {_left(out)}", path=out, reason=_reason(err), errno_=err.errno) from err
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
