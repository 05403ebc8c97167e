"""Atomic outputs: a job either leaves its complete output or none at all.

Everything is written into a temporary sibling of the final path (same file system) and
renamed into place at the end, so an interrupted job never leaves a file or folder that
Snakemake would take as complete. This is the one place that makes temporary outputs:

* they are named ``.{final name}.smtmp-{host}-{pid}-{random}``, so the next write of the same
  path recognises the leftovers of a killed writer on this host (its process is gone) and
  removes them (:func:`remove_stale_temps`);
* they get the permissions of an ordinary new file or folder under the user's umask (not
  ``mkstemp``'s 0600 / ``mkdtemp``'s 0700), so collaborators on shared storage can read them;
* :func:`terminate_on_sigterm` turns SIGTERM into SystemExit, so clean-up handlers run as on
  Ctrl-C.

:func:`check_output_path` is the guard of user-facing ``--out`` paths: an existing path is
replaced only if it is a previous output of this tool (or with ``force``).

Writers use :func:`atomic_file` (a file), :func:`atomic_dir` (a folder, with its manifest) or
:func:`scratch_dir` (a working folder that never becomes an output).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

#: Marks a temporary output in its name: ``.{final name}{TMP_TAG}{host}-{pid}-{random}``.
TMP_TAG = ".smtmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def remove_stale_temps(final: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary siblings of ``final`` left by a killed writer on this host (whose
    process no longer exists); those of live writers and of other hosts are kept."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = glob.escape(f".{final.name}{TMP_TAG}") + "*"
    removed = []
    for p in final.parent.glob(pattern):
        host, _, rest = p.name[len(f".{final.name}{TMP_TAG}") :].rpartition("-")
        host, _, pid = host.rpartition("-")
        if host != _host() or not pid.isdigit() or not rest:
            continue
        if int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        _remove(p)
        removed.append(p)
    return removed


def ensure_parent(path: str | os.PathLike[str]) -> Path:
    """Create ``path``'s parent folder; a clear error if a parent is a file."""
    path = Path(path)
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write {path}: {parent} is not a directory")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def temp_path(final: str | os.PathLike[str], directory: bool = False) -> Path:
    """Create an empty temporary file (or folder) beside ``final``, named so that a later
    run recognises it (see the module docstring), with umask permissions."""
    final = ensure_parent(final)
    if not final.name or final.name in (".", ".."):
        raise ValueError(f"output path {str(final)!r} has no name")
    remove_stale_temps(final)
    prefix = f".{final.name}{TMP_TAG}{_host()}-{os.getpid()}-"
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=final.parent)
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
    return Path(tmp)


#: Written last into every output folder: its files with their sizes and SHA-256 hashes, so a
#: damaged output (a deleted or truncated file) is found by :func:`verify_tree`.
MANIFEST = "speechmerge-manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike[str]) -> Path:
    """Write :data:`MANIFEST` into ``folder``: every file below it (relative path, size,
    SHA-256)."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST
    }
    atomic_write_text(folder / MANIFEST, json.dumps({"files": files}, indent=1) + "\n")
    return folder / MANIFEST


def verify_folder(folder: str | os.PathLike[str], hashes: bool = True) -> list[str]:
    """What is wrong with an output folder against its manifest ([] if nothing, or if it has
    no manifest). ``hashes=False`` checks only presence and sizes (a stat per file)."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return []
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{folder / MANIFEST}: unreadable manifest ({e})"]
    problems = []
    for rel, want in files.items():
        p = folder / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, the manifest says {want['size']}")
        elif hashes and _sha256(p) != want["sha256"]:
            problems.append(f"{p}: content differs from the manifest (SHA-256)")
    return problems


def check_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse a damaged input folder (a file of its manifest missing or of another size),
    naming the file: Snakemake takes a folder output as complete once it exists."""
    problems = verify_folder(folder, hashes=False)
    if problems:
        raise ValueError(
            f"damaged output folder {folder} (rerun the job that makes it): {'; '.join(problems)}"
        )


def verify_tree(root: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """Check every output folder below ``root`` that has a manifest: (folders checked,
    problems, each naming the file)."""
    manifests = sorted(Path(root).rglob(MANIFEST))
    problems = [msg for m in manifests for msg in verify_folder(m.parent)]
    return len(manifests), problems


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to `out_dir`; on success its manifest is written and it
    replaces `out_dir`."""
    out_dir = Path(out_dir)
    tmp = temp_path(out_dir, directory=True)
    try:
        yield tmp
        write_manifest(tmp)
        replace_path(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def scratch_dir(near: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary working folder beside ``near`` (named as a temp output, so a killed
    run's is removed by the next write of ``near``); it is removed at exit, whatever happens."""
    tmp = temp_path(near, directory=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; on success it is renamed to `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` through a temporary sibling file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def replace_path(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``, replacing whatever ``dst`` is (the caller has
    checked that it may): an existing ``dst`` is moved aside first, then removed."""
    if dst.exists() or dst.is_symlink():
        trash = temp_path(dst, directory=True)
        os.replace(dst, trash / "old")
        os.replace(src, dst)
        _remove(trash)
    else:
        os.replace(src, dst)


def check_output_path(
    out: str | os.PathLike[str],
    is_previous_output: Callable[[Path], bool],
    force: bool = False,
    what: str = "--out",
) -> Path:
    """Refuse to replace what the user owns. ``out`` may be new, or a previous output of this
    tool (``is_previous_output``), or anything with ``force``; never the current folder or
    one of its parents. Returns ``out``."""
    out = Path(out)
    res = out.resolve()
    cwd = Path.cwd().resolve()
    if not out.name or out.name in (".", "..") or res == cwd or res in cwd.parents:
        raise ValueError(
            f"{what} {str(out)!r} is the current folder or one of its parents; name a new "
            "folder or file"
        )
    if not (out.exists() or out.is_symlink()) or force:
        return out
    if not out.is_symlink() and is_previous_output(out):
        return out
    kind = "a symlink" if out.is_symlink() else "a folder" if out.is_dir() else "a file"
    raise FileExistsError(
        f"{what} {out} exists and is {kind} that is not an output of speechmerge; refusing to "
        "replace it (pass --force to replace it anyway)"
    )


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit (exit status 143) in the main thread, so
    ``finally`` and ``except BaseException`` clean-ups run as they do on Ctrl-C."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the default
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
