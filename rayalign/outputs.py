"""Where commands write: every output path checked before any work, nothing replaced without ``--force``,
and each output put in place in one step, so a crash never leaves half a file where a good one was.

A command that writes calls :func:`check_file` (or :func:`check_dir` for a model directory) before it
loads data, models or engines: a path that is an existing directory where a file is expected, a parent
that is a file or cannot be written, fail in one line at once instead of after the work, when the results
would be lost; an existing output is refused unless the user passed ``--force``. Then it writes through
:func:`staged`: into a temporary path beside the target (same directory, so same file system), moved
over the target with ``os.replace`` only once complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rayalign.errors import UserError


def check_file(path: Path, key: str, force: bool) -> Path:
    """``path`` can be written as a file: not a directory, its directory creatable and writable, and
    not existing unless ``force``. ``key`` names the flag or config key in the error."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{key}: {path} is a directory; give a file path")
    _refuse_existing(path, key, force, f"{path.stat().st_size} bytes" if path.exists() else "")
    _writable_parent(path, key)
    return path


def check_dir(path: Path, key: str, force: bool) -> Path:
    """``path`` can be written as a directory: not a file, creatable, and not a non-empty directory
    unless ``force`` (an empty one holds no work to lose)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}: {path} is a file, not a directory")
    entries = len(os.listdir(path)) if path.is_dir() else 0
    if entries:
        _refuse_existing(path, key, force, f"a directory of {entries} entr{'y' if entries == 1 else 'ies'}")
    _writable_parent(path, key)
    return path


def _refuse_existing(path: Path, key: str, force: bool, what: str) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} already exists ({key}, {what}); pass --force to replace it")


def _writable_parent(path: Path, key: str) -> None:
    parent = path.parent
    for above in (parent, *parent.parents):
        if above.exists():
            if not above.is_dir():
                raise UserError(f"{key}: {above} is a file, not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):  # what os.access misses: read-only mounts, ACLs, root
            pass
    except OSError as exc:
        raise UserError(f"{key}: cannot write in {parent}: {exc.strerror or exc}") from None


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write a file or a directory to; when the block
    ends without an exception it replaces ``path`` (a directory: the old one is moved aside first, then
    deleted), otherwise it is deleted and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    _remove(tmp)  # left by a killed run whose process id this one reuses
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = path.with_name(f".{path.stem}.old-{os.getpid()}{path.suffix}")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`staged`."""
    with staged(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
