"""One writer per run directory: a lock file naming its holder.

``fit``, ``evaluate --json``, ``visualize`` and ``export`` hold
``RUN/.lock`` while they run. The file holds the holder's pid, host, command
and start time, and the holder keeps an exclusive ``flock`` on it, so the
kernel releases the lock when the holder dies however it dies (kill -9
included). A second writer gets::

    run dir RUN is in use by pid N on host H since T (fit); wait for it or stop it

as a :class:`~aaa_keras.errors.RunDirError` (exit 2). A lock file left by a
process that is gone (its pid is dead on this host, or its ``flock`` is
released) is taken over with a warning.

The lock is re-entrant inside one process: ``fit`` evaluating its own run
dir does not lock itself out. On a file system without ``flock`` support the
pid check alone decides (a live pid on this host, or any pid on another host,
holds the lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

from aaa_keras.errors import RunDirError, RunFailure

LOCK_FILE = ".lock"

_held: dict[str, list] = {}  # real path of the lock file -> [fd, depth, created the run dir]


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_FILE)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (the one home of this check)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 4096):
        raw += chunk
    try:
        holder = json.loads(raw.decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
    """``pid N on host H since T (command)`` for a lock file's content."""
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}{command}"


def _in_use(run_dir: str, holder: dict) -> RunDirError:
    return RunDirError(f"run dir {run_dir} is in use by {describe(holder)}; wait for it to finish "
                       "or stop it, or use another --run-dir")


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: someone holds it; None: the file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise


def acquire(run_dir: str, command: str, log=print) -> str:
    """Take the lock of ``run_dir`` (created if missing) for ``command``; returns the lock path."""
    path = lock_path(run_dir)
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        return path
    created = not os.path.isdir(run_dir)
    host = socket.gethostname()
    for _ in range(10):  # retried only when another process replaced the file under us
        try:
            os.makedirs(run_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EDQUOT, errno.EPERM):
                raise RunFailure(f"run dir {run_dir} is not writable ({error.strerror}); nothing was "
                                 "written; use a --run-dir on a writable disk") from None
            raise
        try:
            locked = _try_flock(fd)
            holder = _read_holder(fd)
            if locked is False:
                raise _in_use(run_dir, holder)
            if locked and os.fstat(fd).st_ino != _inode(path):
                os.close(fd)  # the holder released and deleted it meanwhile: lock the new file
                continue
            pid = holder.get("pid")
            if holder and pid != os.getpid():
                same_host = holder.get("host") == host
                alive = same_host and isinstance(pid, int) and pid_alive(pid)
                if alive or (locked is None and not same_host):
                    raise _in_use(run_dir, holder)
                log(f"Warning: taking over the stale lock of run dir {run_dir}, left by "
                    f"{describe(holder)}, which is no longer running")
            payload = json.dumps({"pid": os.getpid(), "host": host, "since": time.time(),
                                  "command": command}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload + b"\n", 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = [fd, 1, created]
        return path
    raise RunDirError(f"run dir {run_dir}: could not take {path}; another process keeps replacing it")


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def release(run_dir: str) -> None:
    path = lock_path(run_dir)
    key = os.path.realpath(path)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[key]
    fd, _, created = entry
    try:
        # Delete while still holding the flock; a waiter that opened the old
        # file sees the inode change and retries on a fresh one.
        if _inode(path) == os.fstat(fd).st_ino:
            os.unlink(path)
        if created and not os.listdir(run_dir):
            os.rmdir(run_dir)  # a command that failed before writing anything leaves no empty dir
    except OSError:
        pass  # a read-only or vanished run dir: the flock is released with the fd anyway
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(run_dir: str | None, command: str, log=print):
    """``with hold(run_dir, "fit"):`` -- one writer per run dir; ``None`` holds nothing."""
    if run_dir is None:
        yield None
        return
    acquire(run_dir, command, log)
    try:
        yield lock_path(run_dir)
    finally:
        release(run_dir)


def is_multiworker_chief() -> bool:
    """True unless ``TF_CONFIG`` names this process as a non-chief worker.

    The chief is the ``chief`` task, or worker 0 when the cluster has no chief
    (tf.distribute's rule).
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        tf_config = json.loads(raw)
    except ValueError:
        return True  # the strategy reports the malformed TF_CONFIG
    task = tf_config.get("task", {}) or {}
    kind, index = task.get("type"), task.get("index", 0)
    if kind == "chief":
        return True
    if kind == "worker":
        return "chief" not in (tf_config.get("cluster") or {}) and index == 0
    return False


def locks_run_dir(command: str, when=None):
    """Decorator for a click command with a ``run_dir`` argument: hold its lock while it runs.

    ``when(kwargs)`` -> False skips the lock (``evaluate`` without ``--json``
    only reads). A non-chief worker of ``--distribute multiworker`` writes to
    its own temporary directory, so it takes no lock on the shared run dir.
    """
    import functools

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            run_dir = kwargs.get("run_dir")
            if when is not None and not when(kwargs):
                run_dir = None
            if kwargs.get("distribute") == "multiworker" and not is_multiworker_chief():
                run_dir = None
            if run_dir is not None and command != "fit" and not os.path.isdir(run_dir):
                run_dir = None  # nothing to protect; the command itself says the run dir is missing
            with hold(run_dir, command):
                return function(*args, **kwargs)

        return wrapper

    return decorate
