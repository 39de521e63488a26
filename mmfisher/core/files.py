"""Atomic file writes that honour the umask and say clearly when the disk is full.

Every file mmfisher writes (channel configs, slimmed weights, pruning states, data manifests) goes through
:func:`atomic_write`: the data is written to a temp file in the destination's directory, flushed and fsynced, then
moved over the destination with ``os.replace``, so a reader sees the old file or the new one, never half of one.
The temp file gets the mode an ordinary ``open(path, 'w')`` would give (``0o666 & ~umask``), not ``mkstemp``'s
0600, and is removed on any failure.
"""
import errno
import os
import tempfile
from typing import Any, BinaryIO, Callable, Optional

__all__ = ['atomic_write', 'current_umask', 'default_mode', 'DiskFullError']


class DiskFullError(OSError):
    """Writing ``path`` failed because its file system is out of space (or quota)."""


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` give a new file/folder under the current umask (0o644 / 0o755 at umask 022)."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)  # torch's zip writer reports ENOSPC as a RuntimeError from inline_container.cc
    return isinstance(exc, RuntimeError) and ('No space left' in text or 'file write failed' in text
                                              or 'unexpected pos' in text)


def _free_bytes(directory: str) -> Optional[int]:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def atomic_write(path: str, write: Callable[[BinaryIO], Any], size_hint: Optional[int] = None) -> str:
    """Write ``path`` atomically: ``write(f)`` fills a binary temp file beside it, which then replaces ``path``.

    Args:
        path: the destination; its directory is created if needed.
        write: called once with the open temp file (binary mode); e.g. ``lambda f: torch.save(obj, f)``.
        size_hint: bytes the file is expected to need, named in a disk-full error.

    Returns the absolute path written. Raises :class:`DiskFullError` (naming the file, its folder, the bytes
    needed when known and the bytes free) when the file system is full; the temp file is removed on any error
    and ``path`` is left as it was.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        if _is_disk_full(exc):
            free = _free_bytes(directory)
            need = f'about {size_hint / 2 ** 20:.1f} MiB needed, ' if size_hint else ''
            have = f'{free / 2 ** 20:.1f} MiB free' if free is not None else 'free space unknown'
            raise DiskFullError(errno.ENOSPC, f'no space left to write "{os.path.basename(path)}" in "{directory}" '
                                f'({need}{have}). Fix: free space there or choose another work_dir; nothing was '
                                'changed') from exc
        raise
    return path
