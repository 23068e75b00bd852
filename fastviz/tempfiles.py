"""Exclusive temporary outputs: every file or folder fastviz writes appears whole or not at all.

An output is written under a temporary name in its own folder and renamed onto its final name
only when complete and checked. The temporary is created exclusively (``O_CREAT | O_EXCL |
O_NOFOLLOW``; ``mkdir`` for folders) under an unpredictable name, so a symbolic link planted in a
shared folder is never followed, and it is written through its file descriptor, never reopened
by name. The name embeds the final name and the owning process id,
``.NAME.fastviz-tmp-<pid>-<12 hex digits><suffix>``, so a temporary left behind by a process
that was killed (``kill -9``) is recognised and removed (:func:`remove_stale`) the next time the
same output is opened.

* :class:`AtomicFile` / :func:`atomic_output`: a file (``with`` block; on success: check, flush,
  ``fsync``, ``os.replace``; on any exception, ``KeyboardInterrupt`` included: removed, the final
  path left as it was).
* :class:`AtomicFolder` / :func:`atomic_folder`: the same for a folder of files.
* :func:`install_signal_handlers`: SIGTERM and SIGHUP raise :class:`Terminated` (a
  ``BaseException``, like ``KeyboardInterrupt``), so ``with`` blocks clean up; :func:`exit_code`
  gives the conventional status (143, 129; 130 for ``KeyboardInterrupt``). Inside
  :func:`deferred_signals` (a rename and its registry entry, a call into FFmpeg) they wait for
  the block's end.
* Every live temporary of this process is in a registry (:func:`live_temporaries`); what is still
  there when the interpreter exits, or when a second SIGTERM/SIGHUP arrives during clean-up, is
  removed.

An ``OSError`` while writing (disk full, read-only file system, permission denied, ...) becomes an
:class:`OutputError`, one line naming the output and the reason, with nothing left behind.

>>> from fastviz.tempfiles import atomic_output
>>> with atomic_output("/tmp/fastviz-doc.txt") as out:
...     _ = out.write(b"hello")
>>> open("/tmp/fastviz-doc.txt", "rb").read()
b'hello'
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import os
import re
import secrets
import shutil
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from .errors import InputError

__all__ = [
    "MARK",
    "AtomicFile",
    "AtomicFolder",
    "OutputError",
    "Terminated",
    "atomic_folder",
    "atomic_output",
    "deferred_signals",
    "exit_code",
    "install_signal_handlers",
    "live_temporaries",
    "remove_stale",
    "temp_pattern",
]

#: What every temporary's name holds between the final name and the owner's pid.
MARK = ".fastviz-tmp-"

#: Hex digits of randomness in a temporary's name (48 bits from :mod:`secrets`).
_TOKEN_HEX = 12

#: Longest final name (in bytes of the file system encoding) embedded whole in a temporary's name;
#: longer ones are cut, so the temporary's name stays under NAME_MAX (255 bytes).
_EMBED_MAX = 160

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


class OutputError(InputError, OSError):
    """An output could not be written (disk full, read-only file system, permission denied, a
    folder in the way, a failed check of the written file, ...).

    An :class:`~fastviz.errors.InputError` (so the command line reports it as one line) and an
    ``OSError`` (so ``except OSError`` keeps working); ``errno`` is the operating system's error
    number when there is one.
    """

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        if errno_ is not None:
            self.errno = errno_


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (see :func:`install_signal_handlers`).

    Derived from ``BaseException``, like ``KeyboardInterrupt``, so ``except Exception`` does not
    catch it and ``with`` blocks clean up as it passes.

    Attributes
    ----------
    signum : int
        The signal number (15 for SIGTERM, 1 for SIGHUP).
    exit_code : int
        ``128 + signum``, the status a process killed by that signal reports (143, 129).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"terminated by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(exc: BaseException) -> int:
    """Exit status for a process ended by ``exc``: 128 + signal number for :class:`Terminated`
    (SIGTERM 143, SIGHUP 129), 130 for ``KeyboardInterrupt`` (SIGINT).

    Raises
    ------
    TypeError
        For any other exception.
    """
    if isinstance(exc, Terminated):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 128 + int(signal.SIGINT)
    raise TypeError(f"exit_code takes Terminated or KeyboardInterrupt, got {type(exc).__name__}")


# --------------------------------------------------------------------------- registry, signals

_lock = threading.RLock()
_live: set[str] = set()  # paths of this process's temporaries that exist now
_critical_depth = 0  # main thread only: depth of deferred_signals() blocks
_pending_signal: int | None = None
_terminating: int | None = None
_installed: dict[int, object] = {}


def live_temporaries() -> list[Path]:
    """This process's temporaries that exist now (created and neither renamed nor removed)."""
    with _lock:
        return sorted(Path(p) for p in _live)


def _register(path: str) -> None:
    with _lock:
        _live.add(os.path.abspath(path))


def _unregister(path: str) -> None:
    with _lock:
        _live.discard(os.path.abspath(path))


def _is_live(path: str) -> bool:
    with _lock:
        return os.path.abspath(path) in _live


def _remove_path(path: str) -> None:
    """Remove a file, link or folder tree at ``path`` without following links; gone already: fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # does not follow links inside the tree
    else:
        os.unlink(path)


def _remove_live() -> None:
    """Remove every registered temporary (interpreter exit, second signal)."""
    with _lock:
        paths = list(_live)
        _live.clear()
    for path in paths:
        with contextlib.suppress(OSError):
            _remove_path(path)


atexit.register(_remove_live)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back :class:`Terminated` (SIGTERM/SIGHUP) and ``KeyboardInterrupt`` (SIGINT), when
    :func:`install_signal_handlers` is in force, until the block ends, then raise it.

    For steps that must not be cut in two: a temporary created and registered, renamed and
    unregistered; a call into a C library (FFmpeg through PyAV) whose callbacks run Python code
    and would swallow an exception raised there. Nests; other threads run unaffected (Python runs
    signal handlers in the main thread only).
    """
    global _critical_depth, _pending_signal
    if not _in_main_thread():  # Python runs signal handlers in the main thread only
        yield
        return
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if _critical_depth == 0 and _pending_signal is not None:
            signum, _pending_signal = _pending_signal, None
            _raise_terminated(signum)


def _raise_terminated(signum: int) -> None:
    global _terminating
    _terminating = signum
    if signum == getattr(signal, "SIGINT", None):
        raise KeyboardInterrupt
    raise Terminated(signum)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending_signal
    if _terminating is not None:
        # A second signal while the first one's clean-up runs: remove what is left, end now.
        _remove_live()
        os._exit(128 + signum)
    if _critical_depth > 0:
        _pending_signal = signum
        return
    _raise_terminated(signum)


def install_signal_handlers(signals: tuple[int, ...] | None = None) -> Callable[[], None]:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (SIGINT: still
    ``KeyboardInterrupt``), each held back inside :func:`deferred_signals` blocks.

    For a program's own process (the ``fastviz`` command line), not for a library call: the
    exception unwinds the stack like ``KeyboardInterrupt``, so every output's ``with`` block
    removes its temporary; the program then reports it and exits with :func:`exit_code`
    (SIGTERM: 143, SIGHUP: 129, SIGINT: 130). A second signal that arrives while that clean-up
    runs removes the remaining temporaries and ends the process at once with the same status.

    Parameters
    ----------
    signals : tuple of int, optional
        Signal numbers to handle; default ``(SIGTERM, SIGHUP, SIGINT)`` (those the platform
        has).

    Returns
    -------
    callable
        ``restore()``: puts the previous handlers back.

    Raises
    ------
    RuntimeError
        When called outside the main thread (Python installs signal handlers there only).

    Examples
    --------
    >>> restore = install_signal_handlers()
    >>> signal.getsignal(signal.SIGTERM).__name__
    '_handler'
    >>> restore()
    """
    global _terminating, _pending_signal
    if not _in_main_thread():
        raise RuntimeError("install_signal_handlers must be called from the main thread")
    if signals is None:
        signals = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n))
    previous = {}
    for signum in signals:
        previous[int(signum)] = signal.signal(signum, _handler)
    _terminating = None
    _pending_signal = None

    def restore() -> None:
        global _terminating, _pending_signal
        for signum, old in previous.items():
            signal.signal(signum, old)  # type: ignore[arg-type]
        _terminating = None
        _pending_signal = None

    return restore


# --------------------------------------------------------------------------- names


def _embed(name: str) -> str:
    """The final name as embedded in its temporaries' names (cut to keep under NAME_MAX)."""
    raw = os.fsencode(name)
    if len(raw) <= _EMBED_MAX:
        return name
    return os.fsdecode(raw[:_EMBED_MAX]).rstrip("\udcff\ufffd")


def temp_pattern(final: str | os.PathLike) -> re.Pattern[str]:
    """Regular expression matching the names of ``final``'s temporaries; group 1 is the pid.

    >>> bool(temp_pattern("out.mp4").match(".out.mp4.fastviz-tmp-123-0123456789ab.mp4"))
    True
    >>> bool(temp_pattern("out.mp4").match("out.mp4.tmp"))
    False
    """
    prefix = "." + _embed(Path(final).name) + MARK
    return re.compile(re.escape(prefix) + r"([1-9][0-9]*)-[0-9a-f]{%d}(?:\.[^/]*)?\Z" % _TOKEN_HEX)


def _temp_name(final: Path, suffix: str) -> str:
    return f".{_embed(final.name)}{MARK}{os.getpid()}-{secrets.token_hex(_TOKEN_HEX // 2)}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists, another user's
        return True
    return True


def remove_stale(final: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``final`` whose owning process is dead.

    Looks in ``final``'s folder for names matching :func:`temp_pattern` only; a temporary whose
    pid is a running process (``os.kill(pid, 0)`` succeeds or is refused) is kept, as is every
    live temporary of this process. Links are removed, never followed; folders are removed with
    their contents. Best effort: an entry that cannot be removed (read-only folder, another
    user's) is left and not reported; opening the output then reports the real problem.
    Processes are looked up in this machine's (and pid namespace's) process table, so a folder
    shared with other machines or containers should not hold outputs written from both at once.

    Parameters
    ----------
    final : path
        The output's final name.

    Returns
    -------
    list of pathlib.Path
        The temporaries removed.
    """
    final = Path(final)
    folder = final.parent
    pattern = temp_pattern(final)
    me = os.getpid()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if _is_live(entry.path):
            continue
        if pid != me and _pid_alive(pid):
            continue
        try:
            _remove_path(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


# --------------------------------------------------------------------------- errors


def _reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _output_error(what: str, final: Path, exc: OSError) -> OutputError:
    if isinstance(exc, OutputError):
        return exc
    return OutputError(f"cannot write {what} {final}: {_reason(exc)}", exc.errno)


def _check_folder(what: str, final: Path) -> None:
    folder = final.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {what} {final}: folder {folder} does not exist", errno.ENOENT)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY | _O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _PRead(io.RawIOBase):
    """A read-only view of an open file descriptor with its own position (``os.pread``), so
    reading never moves the writer's offset and never reopens the file by name. Closing it
    leaves the descriptor open (it belongs to the :class:`AtomicFile`)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = 0
        #: A ``KeyboardInterrupt`` (or other ``BaseException``) met inside :meth:`readinto`.
        #: C callers such as PyAV's I/O callbacks pass on ``Exception`` only, so it is raised as an
        #: ``OSError(EINTR)`` there and kept here for the caller to raise again.
        self.interrupted: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = os.pread(self._fd, len(buffer), self._pos)
            n = len(data)
            buffer[:n] = data
            self._pos += n
            return n
        except Exception:
            raise
        except BaseException as exc:
            self.interrupted = exc
            raise OSError(errno.EINTR, "interrupted") from exc

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = os.fstat(self._fd).st_size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos


# --------------------------------------------------------------------------- files


class _Transaction:
    """A ``with`` block that commits when it ends normally and discards on any exception
    (``KeyboardInterrupt`` and :class:`Terminated` included), which then propagates."""

    def commit(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def discard(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


class AtomicFile(_Transaction):
    """An output file written under an exclusive temporary name and renamed when complete.

    Creating it removes stale temporaries of the same output (:func:`remove_stale`) and creates
    ``.NAME.fastviz-tmp-<pid>-<random><suffix>`` in ``final``'s folder with ``O_CREAT | O_EXCL |
    O_NOFOLLOW`` (permissions ``0o666`` less the umask, as for any new file). As a context
    manager: when the block ends normally, :meth:`commit` runs; when it ends with an exception
    (``KeyboardInterrupt`` and :class:`Terminated` included), :meth:`discard`.

    Parameters
    ----------
    final : path
        The output's final name. Its folder must exist. A file or a symbolic link there is
        replaced when the output is committed (a link is replaced, never followed).
    check : callable, optional
        ``check(atomic_file)``, run by :meth:`commit` before the rename; it may read the written
        data through :meth:`reader` and raises to refuse the output.
    suffix : str, optional
        Ending of the temporary's name; default ``final``'s extension.
    what : str
        What the output is, for messages ("video", "model weights", ...).

    Attributes
    ----------
    final : pathlib.Path
    path : pathlib.Path
        The temporary (while open).
    file : io.BufferedRandom
        Binary, readable, writable and seekable, on the temporary's descriptor.
    fd : int
        The temporary's file descriptor.

    Raises
    ------
    OutputError
        If the folder does not exist, ``final`` is a folder, or the temporary cannot be created
        (read-only file system, permission denied, disk full, ...): one line naming ``final``
        and the reason, nothing left behind.
    """

    def __init__(
        self,
        final: str | os.PathLike,
        *,
        check: Callable[[AtomicFile], None] | None = None,
        suffix: str | None = None,
        what: str = "output",
    ) -> None:
        self.final = Path(final)
        self.what = what
        self.check = check
        self._done = False
        self._redirected = False
        self.fd = -1
        _check_folder(what, self.final)
        if self.final.is_dir() and not self.final.is_symlink():
            raise OutputError(f"cannot write {what} {self.final}: it is a folder", errno.EISDIR)
        remove_stale(self.final)
        suffix = self.final.suffix if suffix is None else suffix
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY
        fd = -1
        path = ""
        try:
            for _ in range(100):
                path = str(self.final.parent / _temp_name(self.final, suffix))
                with deferred_signals():
                    _register(path)  # before creating: a concurrent remove_stale must skip it
                    try:
                        fd = os.open(path, flags, 0o666)
                    except FileExistsError:
                        _unregister(path)
                        continue
                    except BaseException:
                        _unregister(path)
                        raise
                break
            else:  # pragma: no cover - 100 collisions of 48 random bits
                raise OutputError(f"cannot write {what} {self.final}: no free temporary name", errno.EEXIST)
            self.path = Path(path)
            self.fd = fd
            self._ino = os.fstat(fd)[stat.ST_DEV], os.fstat(fd)[stat.ST_INO]
            self.file: BinaryIO = os.fdopen(fd, "w+b", closefd=False)  # type: ignore[assignment]
        except OSError as exc:
            self._cleanup_failed_open(fd, path)
            raise _output_error(what, self.final, exc) from None
        except BaseException:
            self._cleanup_failed_open(fd, path)
            raise

    @staticmethod
    def _cleanup_failed_open(fd: int, path: str) -> None:
        if fd >= 0:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
        if path:
            _unregister(path)

    # ---- writing, reading back

    def write(self, data) -> int:
        """Write all of ``data`` (bytes-like) at the current position of :attr:`file`.

        Raises
        ------
        OutputError
            For an ``OSError`` (disk full, ...), naming the output. (Writing to :attr:`file`
            directly raises the plain ``OSError``; the ``with`` block removes the temporary
            either way.)
        """
        try:
            return self.file.write(data)
        except OSError as exc:
            raise _output_error(self.what, self.final, exc) from None


    def reader(self) -> _PRead:
        """A new read-only, seekable, unbuffered binary file on the temporary's data.

        Reads with ``os.pread`` on the open descriptor, with its own position: it does not move
        :attr:`file`'s position and never opens the file by name. Flush :attr:`file` first.
        Closing it leaves the descriptor open. Its ``interrupted`` attribute holds a
        ``KeyboardInterrupt`` met while a C library was reading through it (raised there as
        ``OSError(EINTR)``), for the caller to raise again.
        """
        return _PRead(self.fd)

    def redirect_to_null(self) -> None:
        """Point the descriptor at the null device, for an output about to be discarded.

        Writes and seeks through :attr:`file` then succeed and go nowhere, so a library's
        writer (FFmpeg's muxer writing its trailer on close) can be closed without error
        messages on a full or failing disk. The temporary's data is lost: :meth:`discard` next.
        """
        if self.fd < 0:
            return
        null = os.open(os.devnull, os.O_WRONLY | _O_CLOEXEC)
        try:
            os.dup2(null, self.fd)
        finally:
            os.close(null)
        self._redirected = True

    def _still_ours(self) -> bool:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == self._ino

    # ---- ending

    def commit(self) -> Path:
        """Check, flush, ``fsync`` and rename the temporary onto :attr:`final`.

        Returns
        -------
        pathlib.Path
            :attr:`final`.

        Raises
        ------
        OutputError
            For an ``OSError`` on the way (disk full at the last flush, ...), or when the
            temporary's name no longer leads to the file written (replaced by someone else);
            the temporary is removed and :attr:`final` is left as it was. Whatever ``check``
            raises is raised the same way, after the same clean-up.
        """
        if self._done:
            raise RuntimeError(f"AtomicFile({self.final}) was already committed or discarded")
        if self._redirected:
            raise RuntimeError(f"AtomicFile({self.final}) was redirected to the null device: nothing to commit")
        try:
            self.file.flush()
            if self.check is not None:
                self.check(self)
            os.fsync(self.fd)
            if not self._still_ours():
                raise OutputError(
                    f"cannot write {self.what} {self.final}: its temporary file {self.path.name} was replaced "
                    "by someone else while it was written",
                    errno.EEXIST,
                )
            with deferred_signals():
                os.replace(self.path, self.final)
                _unregister(str(self.path))
                self._done = True
        except OSError as exc:
            self.discard()
            raise _output_error(self.what, self.final, exc) from None
        except BaseException:
            self.discard()
            raise
        self._close()
        _fsync_folder(self.final.parent)
        return self.final

    def discard(self) -> None:
        """Close and remove the temporary; :attr:`final` is left as it was. Idempotent."""
        if self._done and not self._registered():
            self._close()
            return
        self._done = True
        try:
            self._close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            _unregister(str(self.path))

    def _registered(self) -> bool:
        return _is_live(str(self.path))

    def _close(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            with contextlib.suppress(OSError, ValueError):
                self.file.close()  # flushes; an error here only matters on commit, checked there
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"AtomicFile(final={str(self.final)!r}, path={str(getattr(self, 'path', ''))!r})"


def atomic_output(
    path: str | os.PathLike,
    *,
    check: Callable[[AtomicFile], None] | None = None,
    suffix: str | None = None,
    what: str = "output",
) -> AtomicFile:
    """Write ``path`` all or nothing: ``with atomic_output(path) as out: out.write(...)``.

    See :class:`AtomicFile` for the parameters, the temporary's name and the errors.

    Examples
    --------
    >>> def nonempty(out):
    ...     if os.fstat(out.fd).st_size == 0:
    ...         raise OutputError(f"{out.final}: nothing written")
    >>> with atomic_output("/tmp/fastviz-doc.bin", check=nonempty) as out:
    ...     _ = out.write(b"\\x00")
    """
    return AtomicFile(path, check=check, suffix=suffix, what=what)


# --------------------------------------------------------------------------- folders


class AtomicFolder(_Transaction):
    """An output folder built under an exclusive temporary name and renamed when complete.

    The temporary folder ``.NAME.fastviz-tmp-<pid>-<random>`` is made with ``mkdir`` (which
    never follows a link) beside ``final``; files are added with :meth:`write_file` (exclusive
    creation, no link followed). On success it is renamed onto ``final``, which must then not
    exist or be an empty folder; on any exception it is removed with its contents.

    Parameters
    ----------
    final : path
        The folder to create. Refused if it is a non-empty folder, a file, or a symbolic link.
    check : callable, optional
        ``check(atomic_folder)``, run before the rename; raises to refuse the output.
    what : str
        What the output is, for messages.

    Raises
    ------
    OutputError
        As :class:`AtomicFile`, and for a ``final`` that is not an empty folder.
    """

    def __init__(
        self, final: str | os.PathLike, *, check: Callable[[AtomicFolder], None] | None = None, what: str = "folder"
    ) -> None:
        self.final = Path(final)
        self.what = what
        self.check = check
        self.files: list[str] = []
        self._done = False
        _check_folder(what, self.final)
        self._check_final()
        remove_stale(self.final)
        path = ""
        try:
            for _ in range(100):
                path = str(self.final.parent / _temp_name(self.final, ""))
                with deferred_signals():
                    _register(path)
                    try:
                        os.mkdir(path, 0o777)
                    except FileExistsError:
                        _unregister(path)
                        continue
                    except BaseException:
                        _unregister(path)
                        raise
                break
            else:  # pragma: no cover
                raise OutputError(f"cannot write {what} {self.final}: no free temporary name", errno.EEXIST)
            self.path = Path(path)
            st = os.lstat(path)
            self._ino = st.st_dev, st.st_ino
        except BaseException as exc:
            if path and _is_live(path):  # created, then interrupted (a deferred signal, ...)
                with contextlib.suppress(OSError):
                    _remove_path(path)
                _unregister(path)
            if isinstance(exc, OSError):
                raise _output_error(what, self.final, exc) from None
            raise

    def _check_final(self) -> None:
        final = self.final
        if final.is_symlink():
            raise OutputError(f"cannot write {self.what} {final}: it is a symbolic link; remove it or name another folder", errno.EEXIST)
        if final.exists():
            if not final.is_dir():
                raise OutputError(f"cannot write {self.what} {final}: a file of that name exists", errno.ENOTDIR)
            try:
                empty = next(os.scandir(final), None) is None
            except OSError as exc:
                raise _output_error(self.what, final, exc) from None
            if not empty:
                raise OutputError(
                    f"cannot write {self.what} {final}: the folder exists and is not empty; name a new or empty folder",
                    errno.ENOTEMPTY,
                )

    def write_file(self, name: str, data: bytes) -> Path:
        """Create file ``name`` (a plain name, no folder part) in the temporary folder, write
        ``data`` and ``fsync`` it.

        Raises
        ------
        OutputError
            For an ``OSError`` (disk full, ...); the caller's ``with`` block then removes the
            temporary folder.
        ValueError
            For a name with a folder part, or a name already written.
        """
        if self._done:
            raise RuntimeError(f"AtomicFolder({self.final}) was already committed or discarded")
        if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
            raise ValueError(f"file name must be a plain name, got {name!r}")
        target = os.path.join(self.path, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY
        try:
            fd = os.open(target, flags, 0o666)
        except FileExistsError:
            raise ValueError(f"{name} was already written to {self.final}") from None
        except OSError as exc:
            raise _output_error(self.what, self.final, exc) from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(target)  # no partial file stays in the folder
            if isinstance(exc, OSError):
                raise _output_error(self.what, self.final, exc) from None
            raise
        os.close(fd)
        self.files.append(name)
        return self.final / name

    def commit(self) -> Path:
        """Check, then rename the temporary folder onto :attr:`final`.

        Raises
        ------
        OutputError
            As :meth:`AtomicFile.commit`, and if ``final`` was filled by someone else meanwhile.
        """
        if self._done:
            raise RuntimeError(f"AtomicFolder({self.final}) was already committed or discarded")
        try:
            if self.check is not None:
                self.check(self)
            self._check_final()
            st = os.lstat(self.path)
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != self._ino:
                raise OutputError(
                    f"cannot write {self.what} {self.final}: its temporary folder {self.path.name} was replaced "
                    "by someone else while it was written",
                    errno.EEXIST,
                )
            _fsync_folder(self.path)
            with deferred_signals():
                os.replace(self.path, self.final)
                _unregister(str(self.path))
                self._done = True
        except OSError as exc:
            self.discard()
            raise _output_error(self.what, self.final, exc) from None
        except BaseException:
            self.discard()
            raise
        _fsync_folder(self.final.parent)
        return self.final

    def discard(self) -> None:
        """Remove the temporary folder and its contents; :attr:`final` is left as it was."""
        if self._done and not _is_live(str(self.path)):
            return
        self._done = True
        try:
            _remove_path(str(self.path))
        finally:
            _unregister(str(self.path))

    def __repr__(self) -> str:
        return f"AtomicFolder(final={str(self.final)!r}, path={str(self.path)!r})"


def atomic_folder(
    path: str | os.PathLike, *, check: Callable[[AtomicFolder], None] | None = None, what: str = "folder"
) -> AtomicFolder:
    """Build folder ``path`` all or nothing; see :class:`AtomicFolder`."""
    return AtomicFolder(path, check=check, what=what)
