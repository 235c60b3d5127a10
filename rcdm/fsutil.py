"""Crash-safe file-system writes: build in a temporary path, then rename into place; one writer per output."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | Path):
    """A temporary sibling of `path` to write (`<stem>.tmp<suffix>`: writers that read the format from the suffix
    still see it), renamed onto `path` when the block ends without error: a crash never leaves a half-written file
    under the real name."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` through `atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def fresh_tmp_dir(out: str | Path) -> Path:
    """An empty sibling directory `<out>.tmp` to build `out` in."""
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def keep_foreign_files(old: str | Path, new: str | Path, owned: set[str]) -> None:
    """Copy the entries of directory `old` that the writer does not own into `new`, before `new` replaces it."""
    old = Path(old)
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name not in owned:
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, Path(new) / entry.name)


def replace_dir(tmp: str | Path, out: str | Path) -> None:
    """Swap `tmp` into `out`. The old directory is deleted only after the new one is in place, so a crash at
    any point leaves either the old or the new directory complete under one of the two names."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)


class OutputLocked(ValueError):
    """Another process is writing the same output."""


@contextmanager
def output_lock(out: str | Path):
    """Hold `<out>.lock` while writing `out`, so that a second writer of the same output is refused at once, with a
    message that names the holder (pid, host, start time, command). The lock is the kernel's (`flock`): it goes with
    its process, so a writer killed with SIGKILL leaves a file that blocks nobody. Without `fcntl` (Windows) nothing
    is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(str(out) + ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputLocked(f"{out} is being written by another process ({holder}); wait for it to finish or stop "
                               f"it (the lock {path} ends with that process)") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder we waited on removed this file on release: lock the one at the path now
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": _command()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        if _same_file(fd, path):
            path.unlink()  # before the lock is released, so a process that opened this file finds it gone
        os.close(fd)


def _command() -> str:
    """How this process was started, short: `rcdm embed ...`, or `python -m rcdm.cli embed ...` under a launcher."""
    if Path(sys.argv[0]).name == "__main__.py" and "-m" in sys.orig_argv:
        return shlex.join(["python", *sys.orig_argv[sys.orig_argv.index("-m"):]])
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd: int, tries: int = 20) -> str:
    """'pid P on HOST since T: COMMAND' from the lock file (its holder writes it just after locking)."""
    for _ in range(tries):
        try:
            h = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            h = None
        if h:
            return f"pid {h['pid']} on {h['host']} since {h['started']}: {h['command']}"
        time.sleep(0.05)
    return "its holder has not written its pid yet"
