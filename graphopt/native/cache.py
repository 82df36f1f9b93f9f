"""The per-user folder of compiled kernels, and the checks made before a library in it is loaded.

Layout: one folder, ``$GRAPHOPT_CACHE``, else ``$XDG_CACHE_HOME/graphopt/kernels``, else
``~/.cache/graphopt/kernels``, created with mode 0700. For each kernel, named by its build key (`build.cache_key`):

* ``<key>.so``: the library, mode 0700;
* ``<key>.so.sha256``: ``<sha256 of the library's bytes>  <key>.so``, the ``sha256sum`` format, recorded when the
  library was built;
* ``.build.lock``: locked (``flock``) while a library is built, so concurrent builders never interleave.

Both are written atomically: to a temporary file in the same folder, then renamed over the final name, the
library first. Loading a library runs its code, so before one is used:

* the folder must be a directory owned by the current user and not writable by group or others
  (else `UnsafeCacheError`: nothing is loaded and graphopt does not repair a folder someone else may have
  written into);
* the library and its record must be regular files (not links), owned by the current user, not writable by
  group or others, and the library's bytes must hash to the recorded digest. A library that fails is not
  loaded: `build.build_library` rebuilds it into a fresh file.

Only the current user can write into such a folder, so nothing can change between the check and the load.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path

from graphopt.native.errors import UnsafeCacheError

MISSING = "missing"
"""What `problem` says of a library that was never built."""

LOCK_NAME = ".build.lock"
_thread_lock = threading.Lock()


def folder_path() -> Path:
    """The cache folder the environment names (not created)."""
    if os.environ.get("GRAPHOPT_CACHE"):
        return Path(os.environ["GRAPHOPT_CACHE"]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "graphopt" / "kernels"


def trusted_folder() -> Path:
    """The cache folder, created 0700 if missing; raises `UnsafeCacheError` unless only this user can write it."""
    folder = folder_path()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(folder)
    except OSError as exc:
        raise UnsafeCacheError(f"cannot create the fused-kernel cache folder {folder}: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeCacheError(f"the fused-kernel cache {folder} is not a directory")
    unsafe = _ownership_problem(info)
    if unsafe:
        raise UnsafeCacheError(
            f"refusing the fused-kernel cache folder {folder}: it {unsafe}; libraries in it could have been written "
            "by another user. Use a folder only you can write (chmod 700), or set GRAPHOPT_CACHE to one")
    return folder.resolve()


def problem(library: Path) -> str | None:
    """None if ``library`` may be loaded, else why not (`MISSING` if it does not exist)."""
    record = _record_path(library)
    try:
        library_bytes = _read_owned(library)
        recorded = _read_owned(record).decode("ascii", errors="replace").split()
    except FileNotFoundError:
        return MISSING if not os.path.lexists(library) else f"its record {record.name} is missing"
    except _NotTrusted as exc:
        return str(exc)
    except OSError as exc:
        return f"it cannot be read: {exc}"
    if len(recorded) != 2 or recorded[1] != library.name:
        return f"its record {record.name} is malformed"
    if hashlib.sha256(library_bytes).hexdigest() != recorded[0]:
        return "its contents changed since it was built (sha256 differs from the recorded one)"
    return None


def publish(built: Path, library: Path) -> None:
    """Move the freshly built ``built`` to ``library`` (same folder) and record its hash, both atomically."""
    os.chmod(built, 0o700)
    digest = hashlib.sha256(built.read_bytes()).hexdigest()
    os.replace(built, library)
    with temporary_file(library.parent, ".sha256") as (record_temp, handle):
        handle.write(f"{digest}  {library.name}\n".encode("ascii"))
        handle.close()
        os.replace(record_temp, _record_path(library))


@contextlib.contextmanager
def build_lock(folder: Path):
    """Held while a library is built and published: by one thread of this process, and one process (``flock``)."""
    import fcntl  # POSIX only, like the rest of the native layer (`availability.unsupported_reason`)

    with _thread_lock:
        descriptor = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the flock


class temporary_file:
    """A new file ``.tmp-*<suffix>`` in ``folder``, mode 0600, open for writing; removed on exit unless renamed."""

    def __init__(self, folder: Path, suffix: str):
        self.folder = folder
        self.suffix = suffix

    def __enter__(self) -> tuple[Path, object]:
        descriptor, name = tempfile.mkstemp(prefix=".tmp-", suffix=self.suffix, dir=self.folder)
        self.path = Path(name)
        self.handle = os.fdopen(descriptor, "wb")
        return self.path, self.handle

    def __exit__(self, *exc_info) -> None:
        self.handle.close()
        if os.path.lexists(self.path):
            os.unlink(self.path)


class _NotTrusted(Exception):
    pass


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _read_owned(path: Path) -> bytes:
    """The bytes of ``path``, read through one descriptor after checking the file it refers to."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _NotTrusted(f"{path.name} is not a regular file")
        owner = _ownership_problem(info)
        if owner:
            raise _NotTrusted(f"{path.name} {owner}")
        return handle.read()


def _ownership_problem(info: os.stat_result) -> str | None:
    if info.st_uid != os.geteuid():
        return f"is owned by uid {info.st_uid}, not by the current user (uid {os.geteuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.filemode(info.st_mode)})"
    return None
