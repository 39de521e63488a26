"""Atomic file writes that honour the umask and say clearly when the disk is full.

Every file mmfisher writes (channel configs, slimmed weights, pruning states, data manifests) goes through
:func:`atomic_write`: the data is written to a temp file in the destination's directory, flushed and fsynced, then
moved over the destination with ``os.replace``, so a reader sees the old file or the new one, never half of one.
The temp file gets the mode an ordinary ``open(path, 'w')`` would give (``0o666 & ~umask``), not ``mkstemp``'s
0600, and is removed on any failure.
"""
import errno
import glob
import os
import tempfile
from typing import Any, BinaryIO, Callable, List, Optional, Sequence, Tuple

__all__ = ['atomic_write', 'atomic_write_all', 'current_umask', 'default_mode', 'remove_stale_temps', 'DiskFullError']


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
    return atomic_write_all([(path, write)], size_hint)[0]


def atomic_write_all(files: Sequence[Tuple[str, Callable[[BinaryIO], Any]]], size_hint: Optional[int] = None
                     ) -> List[str]:
    """Write several files so that a failure changes none of them: every file is written completely to a temp
    file beside its target (and fsynced) first, then all are renamed into place, in the order given.

    Errors as :func:`atomic_write`; on any failure every temp file is removed and no target has changed.
    """
    staged: List[Tuple[str, str]] = []
    current = ''
    try:
        for path, write in files:
            current = os.path.abspath(path)
            directory = os.path.dirname(current)
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(current) + '.', suffix='.tmp')
            staged.append((tmp, current))
            os.fchmod(fd, default_mode())
            with os.fdopen(fd, 'wb') as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as exc:
        for tmp, _ in staged:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
        if _is_disk_full(exc):
            directory = os.path.dirname(current)
            free = _free_bytes(directory)
            need = f'about {size_hint / 2 ** 20:.1f} MiB needed, ' if size_hint else ''
            have = f'{free / 2 ** 20:.1f} MiB free' if free is not None else 'free space unknown'
            raise DiskFullError(errno.ENOSPC, f'no space left to write "{os.path.basename(current)}" in '
                                f'"{directory}" ({need}{have}). Fix: free space there or choose another '
                                'work_dir; no existing file was changed') from exc
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    return [path for _, path in staged]


def remove_stale_temps(path: str) -> None:
    """Remove temp files a killed writer of ``path`` left behind (``.<name>.*.tmp`` beside it)."""
    directory, name = os.path.split(os.path.abspath(path))
    for tmp in glob.glob(os.path.join(glob.escape(directory), '.' + glob.escape(name) + '.*.tmp')):
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
