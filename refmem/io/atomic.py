"""The one atomic writer: every file refmem writes goes through :func:`atomic_write`.

Guarantees (checked by ``tests/test_io.py``):

- **Atomic.** The content is written to a temporary file in the target's directory, created
  exclusively under a name unique to the process (``.NAME.<pid>-<token>.tmp<suffix>``), flushed
  and ``fsync``-ed, and moved over the target with :func:`os.replace` only when complete. On
  any error the temporary file is removed (only this writer's own temporary, never another
  writer's) and no output is left behind.
- **No user file is lost.** The output may not be an input of the same run (compared by resolved
  path *and* by device/inode, so hard links and symbolic links to an input are caught). Only
  regular files are written: an existing directory, device node, FIFO, socket or symbolic link
  at the output path is an error (``--force`` does not change that). An existing regular file is
  replaced only when it is a refmem file of the same *kind* (:func:`file_kind`); anything else (a
  model, an input, a foreign file, a result of another command) needs ``force=True``.
- **One writer per output.** A writer holds a lock file ``.NAME.lock`` (created exclusively,
  holding the process id) from its preflight (:func:`check_output`, called before any
  computation) until the output is in place. A second process that wants the same output gets
  a clean one-line error at once; a lock left by a killed process (its pid no longer runs) is
  taken over.
- **Errors are one line.** A missing directory, an unwritable place (read-only file system,
  ``/proc``), a full disk or file-size limit, an overlong name all raise
  :class:`~refmem.errors.DataError` naming the output.

Format helpers build the bytes of a file and hand them to the writer: :func:`write_h5` (HDF5
built in memory with the ``core`` driver, so a failing disk never leaves h5py with a half-written
file), :func:`write_npz` and :func:`write_png`.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

__all__ = ["atomic_write", "check_output", "release_output", "release_outputs", "file_kind", "file_sha256",
           "write_h5", "atomic_h5", "write_npz", "write_png", "InputFile", "normalize_inputs"]

_HDF5_SIG = b"\x89HDF\r\n\x1a\n"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_ZIP_SIG = b"PK\x03\x04"
_TMP_EXTRA = 48                 # characters a temporary / lock name adds to the target's name

# ---------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputFile:
    """An input of a run: the path as given, its role (``model``, ``input``, …), identity."""

    role: str
    given: str
    real: str
    ident: tuple | None          # (st_dev, st_ino) of an existing file, else None


def normalize_inputs(inputs) -> list:
    """``inputs`` as a list of :class:`InputFile`: a mapping role → path, or a sequence of
    paths (roles ``input0``, ``input1``, …); ``None`` entries are skipped."""
    if inputs is None:
        return []
    items = inputs.items() if isinstance(inputs, dict) else \
        ((f"input{i}", p) for i, p in enumerate(inputs))
    out = []
    for role, p in items:
        if p is None:
            continue
        if isinstance(p, InputFile):
            out.append(p)
            continue
        given = os.fspath(p)
        try:
            st = os.stat(given)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        out.append(InputFile(str(role), str(given), os.path.realpath(given), ident))
    return out


def file_sha256(path) -> str | None:
    """SHA-256 (hex) of a regular file's content; ``None`` when it is not a readable file."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


# ---------------------------------------------------------------------- kinds
def _png_text(path) -> dict:
    out = {}
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIG:
            return out
        while True:
            head = f.read(8)
            if len(head) < 8:
                return out
            n = int.from_bytes(head[:4], "big")
            ctype = head[4:]
            if ctype == b"IEND" or n > (1 << 26):
                return out
            data = f.read(n)
            f.read(4)                                  # CRC
            if ctype == b"tEXt" and b"\x00" in data:
                k, v = data.split(b"\x00", 1)
                out[k.decode("latin-1")] = v.decode("latin-1")


def file_kind(path) -> str | None:
    """The refmem kind of an existing file, or ``None`` for a file refmem did not write.

    HDF5 result files: the root attribute ``kind`` (with ``format = "refmem-result"``; files of
    refmem 0.1 carry ``command`` instead); other refmem HDF5 files: their ``format``
    (``refmem-model``, ``refmem-golden``, ``refmem-checkpoint``); ``.npz``: the entry
    ``refmem_kind``; PNG: the text chunk ``refmem_kind``; JSON: the key ``format``.
    """
    from .codec import decode_attr

    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head == _HDF5_SIG:
            import h5py
            with h5py.File(path, "r") as h:
                fmt = decode_attr(h.attrs.get("format", None))
                if fmt == "refmem-result":
                    kind = decode_attr(h.attrs.get("kind", None))
                    return kind if isinstance(kind, str) else None
                if isinstance(fmt, str) and fmt.startswith("refmem"):
                    return fmt
                cmd = decode_attr(h.attrs.get("command", None))
                if isinstance(cmd, str) and "refmem_version" in h.attrs:
                    return cmd                          # refmem 0.1 result files
            return None
        if head == _PNG_SIG:
            return _png_text(path).get("refmem_kind")
        if head[:4] == _ZIP_SIG:
            import numpy as np
            with np.load(path, allow_pickle=False) as z:
                if "refmem_kind" in z.files:
                    return str(z["refmem_kind"])
            return None
        if head.lstrip()[:1] == b"{":
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            fmt = d.get("format") if isinstance(d, dict) else None
            return fmt if isinstance(fmt, str) else None
    except Exception:                                   # unreadable / foreign: not ours
        return None
    return None


# ---------------------------------------------------------------------- target checks
def _name_max(directory) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _target(path) -> Path:
    if path is None:
        raise DataError("no output path given")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise DataError("output path is empty")
    if "\x00" in text:
        raise DataError("output path contains a NUL character")
    p = Path(text)
    if text.endswith(os.sep) or p.name in ("", ".", ".."):
        raise DataError(f"output {text} names a directory, not a file")
    parent = p.parent
    if not parent.exists():
        raise DataError(f"output directory does not exist: {parent}")
    if not parent.is_dir():
        raise DataError(f"output directory is not a directory: {parent}")
    if len(os.fsencode(p.name)) + _TMP_EXTRA > _name_max(parent):
        raise DataError(f"output file name is too long ({len(p.name)} characters): {p.name[:40]}…")
    return p


def _check_target(p: Path, kind: str, inputs, force: bool, marker=None) -> None:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise DataError(f"cannot inspect output {p} ({e.strerror})") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise DataError(f"output {p} is a symbolic link; refmem writes only regular files "
                            "(remove the link or choose another name)")
        if stat.S_ISDIR(st.st_mode):
            raise DataError(f"output {p} is an existing directory")
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"output {p} exists and is not a regular file (device, FIFO or "
                            "socket); refmem writes only regular files")
    real = os.path.realpath(p)
    for inp in inputs:
        if real == inp.real or (st is not None and inp.ident == (st.st_dev, st.st_ino)):
            raise DataError(f"output {p} is also an input of this run ({inp.role} "
                            f"{inp.given}); choose another output")
    if st is not None and not force:
        probe = p if marker is None else Path(marker)
        found = file_kind(probe)
        if found != kind:
            what = "not a refmem file" if found is None else f"a refmem {found!r} file"
            raise DataError(f"output {p} exists and is {what}, not a refmem {kind!r} result; "
                            "refusing to replace it (use --force, or choose another name)")


# ---------------------------------------------------------------------- locks
_HELD: dict = {}                 # real path of a target → _Lock held by this process


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def clear_stale_lock(target) -> bool:
    """Remove the lock of ``target`` if the process that held it no longer runs on this host
    (a killed writer); True when a lock was removed. A live writer's lock is left alone."""
    lk = _Lock(Path(target))
    return lk.path.exists() and lk._stale()


class _Lock:
    def __init__(self, target: Path):
        self.target = target
        self.path = target.with_name(f".{target.name}.lock")
        self.token = f"{os.getpid()} {socket.gethostname()} {secrets.token_hex(6)}\n"
        self.held = False

    def acquire(self):
        for attempt in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if attempt < 2 and self._stale():
                    continue
                raise DataError(f"output {self.target} is being written by another refmem "
                                f"process ({self._owner()}); wait for it or choose another "
                                f"output (if no refmem runs, remove {self.path})") from None
            except OSError as e:
                raise DataError(f"cannot write to {self.target.parent or '.'} "
                                f"({e.strerror or type(e).__name__})") from None
            try:
                os.write(fd, self.token.encode())
            except OSError as e:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise DataError(f"cannot write to {self.target.parent or '.'} "
                                f"({e.strerror or type(e).__name__})") from None
            os.close(fd)
            self.held = True
            return self

    def _read(self):
        try:
            return self.path.read_text().split()
        except (OSError, UnicodeDecodeError):
            return []

    def _owner(self):
        parts = self._read()
        return f"pid {parts[0]}" if parts else "lock " + str(self.path)

    def _stale(self) -> bool:
        """True (and the lock removed) when its owner no longer runs on this host."""
        parts = self._read()
        if len(parts) < 2 or not parts[0].isdigit():
            return False                 # being written right now, or not ours: not stale
        pid, host = int(parts[0]), parts[1]
        if host != socket.gethostname():
            return False
        if pid == os.getpid():
            if os.path.realpath(self.target) in _HELD:
                return False
        elif _pid_alive(pid):
            return False
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        return True

    def release(self):
        if self.held:
            self.held = False
            try:
                if self.path.read_text() == self.token:
                    os.unlink(self.path)
            except OSError:
                pass
        _HELD.pop(os.path.realpath(self.target), None)


def _hold(p: Path) -> _Lock:
    key = os.path.realpath(p)
    lock = _HELD.get(key)
    if lock is None or not lock.held:
        lock = _Lock(p).acquire()
        _HELD[key] = lock
    return lock


def release_output(path) -> None:
    """Release the lock of one output taken by :func:`check_output` (no-op if not held)."""
    lock = _HELD.get(os.path.realpath(os.fspath(path)))
    if lock is not None:
        lock.release()


def release_outputs() -> None:
    """Release every output lock this process holds (the CLI calls it when a command ends)."""
    for lock in list(_HELD.values()):
        lock.release()
    _HELD.clear()


atexit.register(release_outputs)


def check_output(path, kind: str, inputs=(), force: bool = False, *, marker=None) -> Path:
    """Preflight of an output, called **before** any computation.

    Validates the target (directory exists, name not too long, not an input of the run, a
    regular file or absent, replaceable under the same-kind rule unless ``force``), proves the
    directory writable by creating the output's lock file, and keeps that lock until the output
    is written (:func:`atomic_write`) or :func:`release_outputs` is called. ``marker`` names
    another file whose kind decides replaceability (a dataset directory's ``meta.json``).
    Returns the output as a :class:`~pathlib.Path`.
    """
    p = _target(path)
    ins = normalize_inputs(inputs)
    _check_target(p, kind, ins, force, marker)
    _hold(p)
    return p


# ---------------------------------------------------------------------- the writer
def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, kind: str, write_fn, *, inputs=(), force=False, marker=None) -> Path:
    """Write a file atomically: ``write_fn(fh)`` writes the content to the binary file object
    ``fh`` (a fresh temporary file next to ``path``); it is then fsync-ed and moved over
    ``path``. Enforces every rule of the module docstring; returns the output path."""
    p = _target(path)
    ins = normalize_inputs(inputs)
    _check_target(p, kind, ins, force, marker)         # before taking the lock
    lock = _hold(p)
    try:
        _check_target(p, kind, ins, force, marker)     # again: the world may have changed
        try:
            old_mode = os.stat(p).st_mode & 0o7777
        except OSError:
            old_mode = None
        tmp = None
        try:
            for _ in range(5):
                cand = p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp{p.suffix}")
                try:
                    fd = os.open(cand, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    continue
                tmp = cand
                break
            else:  # pragma: no cover - five token collisions
                raise DataError(f"cannot create a temporary file next to {p}")
            with os.fdopen(fd, "wb") as fh:
                if old_mode is not None:
                    os.fchmod(fh.fileno(), old_mode)
                write_fn(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
            tmp = None
            _fsync_dir(p.parent)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise DataError(f"cannot write {p} ({reason})") from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    finally:
        lock.release()
    return p


# ---------------------------------------------------------------------- formats
@contextlib.contextmanager
def atomic_h5(path, kind: str, *, inputs=(), force=False):
    """Yield an HDF5 file held in memory (``core`` driver); when the block succeeds its image is
    written to ``path`` by :func:`atomic_write` (a failing disk never reaches h5py)."""
    import h5py

    name = f"refmem-memory-{os.getpid()}-{secrets.token_hex(8)}.h5"
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        yield f
        f.flush()
        image = bytes(f.id.get_file_image())
    atomic_write(path, kind, lambda fh: fh.write(image), inputs=inputs, force=force)


def write_h5(path, kind: str, build, *, inputs=(), force=False) -> Path:
    """Write an HDF5 file atomically; ``build(f)`` fills the (in-memory) file ``f``."""
    with atomic_h5(path, kind, inputs=inputs, force=force) as f:
        build(f)
    return _target(path)


def write_npz(path, kind: str, arrays: dict, *, inputs=(), force=False) -> Path:
    """Write a ``.npz`` archive atomically; the entry ``refmem_kind`` records ``kind``."""
    import numpy as np

    if "refmem_kind" in arrays:
        raise ValueError("'refmem_kind' is reserved")

    def fill(fh):
        np.savez(fh, refmem_kind=np.array(kind), **arrays)
    return atomic_write(path, kind, fill, inputs=inputs, force=force)


def write_png(path, kind: str, fig, *, dpi=110, inputs=(), force=False) -> Path:
    """Save a matplotlib figure as PNG atomically; the text chunk ``refmem_kind`` records ``kind``."""
    from .._version import __version__

    def fill(fh):
        fig.savefig(fh, format="png", dpi=dpi,
                    metadata={"refmem_kind": kind, "Software": f"refmem {__version__}"})
    return atomic_write(path, kind, fill, inputs=inputs, force=force)
