"""Artifacts on the control node: content-addressed files, written atomically and durably.

``write("contacts/alice/pc01.reg", data)`` stores the bytes as
``<state>/artifacts/contacts/alice/pc01.<sha12>.reg`` (tmp file in the same
directory, fsync, ``os.replace``, fsync of the directory) and records that
version as the *current* one of the name in the state store, committed
before ``write`` returns. A changed content under the same name keeps the
old version beside the new one; writing identical content again is a no-op
(same file, no new record).
"""
from __future__ import annotations

import hashlib
import os
import shlex
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runner.errors import OptionsError, RunnerError
from runner.state import ARTIFACTS_DIR, StateStore
from runner.steps.base import ArtifactRef


def _versioned_name(name: str, sha: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    suffix = rel.suffix
    stem = rel.name[: -len(suffix)] if suffix else rel.name
    return rel.with_name(f"{stem}.{sha[:12]}{suffix}")


def on_disk_name(name: str, data: bytes) -> str:
    """Where the version of artifact ``name`` holding ``data`` is kept, relative to the state
    directory: ``artifacts/<dir>/<stem>.<sha12><suffix>`` (docs/state-directory.md)."""
    return f"{ARTIFACTS_DIR}/{_versioned_name(name, hashlib.sha256(data).hexdigest())}"


def _check_name(name: str) -> PurePosixPath:
    rel = PurePosixPath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or any(p in ("..", "") for p in rel.parts):
        raise RunnerError(f"invalid artifact name {name!r}: must be a relative path without '..'")
    return rel


def _checked_key(name: str) -> str:
    """``str(_check_name(name))`` without building a path for the common name (every read
    has one): slashes only, no empty, ``.`` or ``..`` part."""
    parts = name.split("/")
    if "\\" in name or not all(parts) or "." in parts or ".." in parts:
        return str(_check_name(name))
    return name


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, refused (OptionsError, exit 5) when it exists and is not a regular file.

    Every command that writes a file the user names (``-o``) calls this first: the atomic
    write replaces whatever is at the path, so ``-o /dev/null`` run as root would swap the
    device for a regular file, ``-o`` naming a FIFO or a folder would replace or fail on
    it, and a symbolic link would be replaced by a file rather than written through.
    """
    out = Path(path)
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return out
    except OSError as e:
        raise OptionsError(f"{out}: cannot check the output path: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return out
    kind = ("a symbolic link (give the path of the file itself)" if stat.S_ISLNK(st.st_mode) else
            "a folder" if stat.S_ISDIR(st.st_mode) else
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
            "a named pipe" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else
            "not a regular file")
    raise OptionsError(f"{out} is {kind}: the output must be a new or an existing regular file, which is "
                       "replaced as a whole; nothing was written")


def write_output(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a user-named output file atomically, after :func:`check_output_path`."""
    out = check_output_path(path)
    atomic_write(out, data)
    return out


class ArtifactStore:
    """The ``Artifacts`` a step gets: files under ``<state>/artifacts/``, versions in the store."""

    def __init__(self, store: StateStore, *, run_id: str | None = None, task_key: str | None = None,
                 root: Path | None = None) -> None:
        self.store = store
        self.root = root or (store.directory / "artifacts")
        self.run_id = run_id
        self.task_key = task_key
        # the folder resolved, and each of its subfolders found inside it, once for this store
        # and every for_task() copy of it (resolving every read's path was an lstat per
        # component: 7 % of a 1,000-client run's CPU)
        self._root_resolved: list[Path] = []
        self._inside_dirs: dict[str, bool] = {}
        self._root_text = str(self.root)

    def for_task(self, task_key: str) -> "ArtifactStore":
        """The same store, recording ``task_key`` as the writer of new versions."""
        other = ArtifactStore(self.store, run_id=self.run_id, task_key=task_key, root=self.root)
        other._root_resolved = self._root_resolved  # shared: resolved by whichever reads first
        other._inside_dirs = self._inside_dirs
        return other

    def write(self, name: str, data: bytes) -> ArtifactRef:
        """Store ``data`` as the current version of ``name``; durable when this returns."""
        rel = _check_name(name)
        sha = hashlib.sha256(data).hexdigest()
        key = str(rel)
        current = self.store.current_artifact(key)
        if current is not None and current.sha256 == sha and self._inside(current.path).exists():
            return ArtifactRef(path=str(self.root / current.path), sha256=sha, size=current.size)
        versioned = _versioned_name(key, sha)
        target = self.root / versioned
        if not (target.exists() and _sha_of(target) == sha):
            remove_stale_temporaries(target.parent)
            atomic_write(target, data)
        self.store.add_artifact(key, str(versioned), sha, len(data),
                                task_key=self.task_key, run_id=self.run_id)
        return ArtifactRef(path=str(target), sha256=sha, size=len(data))

    def _inside(self, recorded: str) -> Path:
        """The file a stored artifact row points at, refused when it leaves the artifacts folder
        (an absolute path or ``..`` in a tampered or damaged state.db)."""
        return Path(self._inside_path(recorded))

    def _inside_path(self, recorded: str) -> str:
        """:meth:`_inside` as a string (a read builds no Path). The row is read as the path it is
        on this system: ``/`` separates, a backslash is part of a name, as when it is opened."""
        path = os.path.join(self._root_text, recorded)
        if not recorded or recorded.startswith("/") or ".." in recorded.split("/") or os.path.islink(path) \
                or not self._dir_inside(recorded.rpartition("/")[0]):
            raise RunnerError(f"{self.store.path}: the artifact row {recorded!r} points outside {self.root}; "
                              "the state store was edited or damaged (see docs/state-directory.md)")
        return path

    def _dir_inside(self, rel_dir: str) -> bool:
        """Whether the subfolder ``rel_dir`` (no ``..``) resolves inside the artifacts folder,
        symbolic links followed. Remembered per folder once it exists, for the life of this
        store (the state directory is locked by the run, and the runner makes no links there);
        a folder that does not exist yet holds no file to read and is checked again next time."""
        known = self._inside_dirs.get(rel_dir)
        if known is not None:
            return known
        if not self._root_resolved:
            self._root_resolved.append(self.root.resolve())
        root = self._root_resolved[0]
        try:
            resolved = (self.root / rel_dir).resolve(strict=True)
        except OSError:   # missing (or a link to nowhere): nothing there to read, nothing cached
            return True
        inside = resolved == root or root in resolved.parents
        self._inside_dirs[rel_dir] = inside
        return inside

    def read(self, name: str) -> bytes | None:
        """The current content of ``name`` (checked against its sha256), or None."""
        current = self.store.current_artifact(_checked_key(name))
        if current is None:
            return None
        path = self._inside_path(current.path)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != current.sha256:
            raise RunnerError(f"artifact {path} was changed after it was written (it does not match its "
                              f"recorded sha256); the runner never imports or verifies from an edited file"
                              + _recovery_hint(self.store, name))
        return data


#: When this process started: a temporary file older than that was left by a run that
#: died mid-write (the state directory's lock means no other process writes here now).
_STARTED = time.time()


#: The folders :func:`remove_stale_temporaries` has swept in this process.
_SWEPT: set[str] = set()


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the ``.<name>.*.tmp`` files a killed run left in ``directory`` (never one
    of this run's: a write in flight on another thread is younger than the process).

    Each folder is swept once per process: what a killed run left was there before this
    process started, and this process leaves none while it lives (``atomic_write`` removes
    its own on any failure). Sweeping before every write listed a folder such as
    ``exim-backup/``, one file per user, once per user: a fifth of the runner's time by
    wave 2 of a 10,000-client run. A folder that cannot be listed (not made yet) is not
    marked, and is swept at its next write."""
    key = os.path.abspath(directory)  # a relative --state or outbox names another folder after a chdir
    if key in _SWEPT:
        return
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    failed = False
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            try:
                if entry.stat().st_mtime < _STARTED:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass  # gone already (a write in flight renamed its own)
            except OSError:
                failed = True  # tried again at the folder's next write
    if not failed:
        _SWEPT.add(key)


def _sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- recovery from an edited export ---------------------------------------------

EXPORT_MODULE = "export_contacts"
EDITED_DIR = "edited"  # <state>/edited/<time>/...: files moved aside by `runner state reexport`


def _user_of(name: str) -> str | None:
    """The user alias an artifact name belongs to (``contacts/<alias>/...``), or None."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return parts[1] if len(parts) >= 3 and parts[0] == "contacts" else None


def reexport_command(store: StateStore, aliases: list[str]) -> str:
    """The command that has ``aliases`` exported again from their machines."""
    return shlex.join(["runner", "state", "reexport", "--state", str(store.directory), ",".join(aliases)])


def _recovery_hint(store: StateStore, name: str) -> str:
    alias = _user_of(name)
    if alias is None:
        return "; restore the file from a backup (see docs/edited-artifacts.md)"
    return (f". To export {alias}'s contacts again from their machines, keeping the edited file aside, "
            f"run `{reexport_command(store, [alias])}`, then the same apply again (docs/edited-artifacts.md)")


@dataclass(frozen=True)
class Reexport:
    """What ``reexport`` did for one user."""

    alias: str
    moved: tuple[tuple[str, str], ...]  # (artifact file, where it was moved)
    reopened: int                       # export tasks marked pending again


def reexport(store: StateStore, aliases: list[str]) -> list[Reexport]:
    """Have each user's export run again: their artifacts that were changed on disk are moved to
    ``<state>/edited/<time>/`` (kept, never read again), and their export tasks are marked
    pending in every run, so the next ``runner apply`` exports them from their machines and the
    import and verification use that new export. Takes the state directory's lock."""
    unknown = [a for a in aliases if not store.export_tasks(EXPORT_MODULE, a)
               and not store.artifacts_under(f"contacts/{a}/")]
    if unknown:
        raise OptionsError(f"no export of {', '.join(map(repr, unknown))} is recorded in {store.directory} "
                           "(give user aliases as the inventory names them, comma separated)")
    store.acquire_lock()
    try:
        aside = store.directory / EDITED_DIR / time.strftime("%Y%m%dT%H%M%S")
        done = []
        for alias in aliases:
            moved = []
            for row in store.artifacts_under(f"contacts/{alias}/"):
                path = ArtifactStore(store)._inside(row.path)
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                if hashlib.sha256(data).hexdigest() == row.sha256:
                    continue
                target = aside / row.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                moved.append((str(path), str(target)))
            note = (f"to be exported again (runner state reexport at {time.strftime('%Y-%m-%d %H:%M:%S')}"
                    + (f"; edited file(s) moved to {aside}" if moved else "") + ")")
            done.append(Reexport(alias, tuple(moved), store.reopen_tasks(EXPORT_MODULE, alias, note)))
        return done
    finally:
        store.release_lock()
