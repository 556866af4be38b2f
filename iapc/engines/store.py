"""The versioned, atomic engine store: the only way an engine gets deployed.

Layout::

    ROOT/
      CURRENT                  "v000007\\n": the deployed version (replaced atomically)
      versions/v000007/        model.onnx, [model.engine], manifest.json
      .lock                    serialises writers (flock)
      .staging-*/ .trash-*/    a writer's work in progress / a pruned version on its way out

A version is written into a staging folder, every file fsynced, the folder fsynced and renamed
into ``versions/`` (atomic on POSIX), then ``CURRENT`` is replaced with ``os.replace``. A reader
therefore sees either the previous version or the complete new one. Readers verify the sha256 of
every file against the manifest and fall back to the newest older good version if the current
one is damaged. Free of torch: the inference process reads the store.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapc.errors import UserError
from iapc.files import CHUNK as _CHUNK, sha256_of

FORMAT = "iapc-engine-store/1"
ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
MANIFEST_FILE = "manifest.json"
POINTER_FILE = "CURRENT"
_VERSION_RE = re.compile(r"^v(\d{6})$")
_RESERVED_KEYS = {"format", "version", "created", "files"}
log = logging.getLogger(__name__)


class CorruptVersion(UserError):
    """A version whose files are missing, partial or do not match their manifest."""


@dataclass(frozen=True)
class Version:
    name: str  # "v000007"
    path: Path
    manifest: dict[str, Any] = field(compare=False)

    @property
    def number(self) -> int:
        return int(self.name[1:])

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def engine_path(self) -> Path | None:
        return self.path / ENGINE_FILE if ENGINE_FILE in self.manifest.get("files", {}) else None


@dataclass(frozen=True)
class Resolution:
    """What :meth:`EngineStore.resolve_current` found: the version to serve and what was wrong."""

    version: Version | None
    problems: list[str]


def version_name(number: int) -> str:
    return f"v{number:06d}"


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the version folder ``path``, files not checked; :class:`CorruptVersion`
    when it is missing, unreadable or not a store manifest."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise CorruptVersion(f"{path.name}: no {MANIFEST_FILE} (incomplete version)") from None
    except (OSError, ValueError) as err:
        raise CorruptVersion(f"{path.name}: unreadable {MANIFEST_FILE} ({err})") from None
    if manifest.get("format") != FORMAT or ONNX_FILE not in manifest.get("files", {}):
        raise CorruptVersion(f"{path.name}: {MANIFEST_FILE} is not a {FORMAT} manifest with {ONNX_FILE}")
    return manifest


def verified_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the version folder ``path`` with every file checked against its sha256;
    :class:`CorruptVersion` if one is missing or differs."""
    manifest = read_manifest(path)
    for file_name, expected in manifest["files"].items():
        try:
            actual = sha256_of(path / file_name)
        except FileNotFoundError:
            raise CorruptVersion(f"{path.name}: {file_name} is missing") from None
        if actual != expected["sha256"]:
            raise CorruptVersion(f"{path.name}: {file_name} sha256 mismatch (file damaged or modified)")
    return manifest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durably(src: Path, dst: Path) -> dict[str, Any]:
    """Copy, hash while copying, fsync; returns {"sha256", "bytes"}. dst is owner-only."""
    digest, size = hashlib.sha256(), 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size}


def _write_durably(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class EngineStore:
    """``EngineStore(root, keep=K)``: publish versions, serve the current good one, keep the last K."""

    def __init__(self, root: str | os.PathLike, keep: int = 5):
        if keep < 1:
            raise UserError(f"keep={keep}: the store must keep at least 1 version")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / "versions"

    # Writing ----------------------------------------------------------------------------------
    def _ensure_layout(self) -> None:
        for folder in (self.root, self.versions_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)

    def _locked(self):
        """An exclusive flock on ROOT/.lock (released when the returned file is closed)."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        lock = os.fdopen(fd, "r+")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        return lock

    def _remove_leftovers(self) -> None:
        """Staging/trash folders of writers that died (only called while holding the lock)."""
        for leftover in list(self.root.glob(".staging-*")) + list(self.root.glob(".trash-*")):
            shutil.rmtree(leftover, ignore_errors=True)

    def _next_number(self) -> int:
        numbers = [v.number for v in self._folders()]
        return max(numbers, default=0) + 1

    def _stage(self, staging: Path, onnx_path: Path, engine_path: Path | None,
               manifest_extra: dict[str, Any], name: str) -> None:
        staging.mkdir(mode=0o700)
        files = {ONNX_FILE: _copy_durably(onnx_path, staging / ONNX_FILE)}
        if engine_path is not None:
            files[ENGINE_FILE] = _copy_durably(engine_path, staging / ENGINE_FILE)
        manifest = {**manifest_extra, "format": FORMAT, "version": name,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
        # the manifest is written last: a version folder without one is never complete
        _write_durably(staging / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True))
        _fsync_dir(staging)

    def _point_current_to(self, name: str) -> None:
        tmp = self.root / f".{POINTER_FILE}.{uuid.uuid4().hex}.tmp"
        _write_durably(tmp, name + "\n")
        os.replace(tmp, self.root / POINTER_FILE)
        _fsync_dir(self.root)

    def publish(self, onnx_path: str | os.PathLike, engine_path: str | os.PathLike | None = None,
                manifest_extra: dict[str, Any] | None = None) -> Version:
        """Store the files as a new version and make it current; returns that version.

        ``manifest_extra``: model name/config, adaptation step, parity and health figures...
        """
        onnx_path = Path(onnx_path)
        engine_path = Path(engine_path) if engine_path is not None else None
        for path in (onnx_path, engine_path):
            if path is not None and not path.is_file():
                raise UserError(f"cannot publish {path}: the file does not exist")
        extra = dict(manifest_extra or {})
        clash = _RESERVED_KEYS & set(extra)
        if clash:
            raise UserError(f"manifest_extra may not set {sorted(clash)}: the store writes those")
        self._ensure_layout()
        with self._locked():
            self._remove_leftovers()
            name = version_name(self._next_number())
            staging = self.root / f".staging-{name}-{uuid.uuid4().hex[:8]}"
            try:
                self._stage(staging, onnx_path, engine_path, extra, name)
            except OSError:  # e.g. disk full: free what was written, keep the store as it was
                shutil.rmtree(staging, ignore_errors=True)
                raise
            final = self.versions_dir / name
            os.rename(staging, final)  # atomic: the version appears complete or not at all
            _fsync_dir(self.versions_dir)
            self._point_current_to(name)
            self._prune_locked(name)
        return self.load_verified(name)

    def prune(self) -> list[str]:
        """Remove all but the newest ``keep`` versions (never the current one); returns removed names."""
        self._ensure_layout()
        with self._locked():
            return self._prune_locked(self._read_pointer())

    def _prune_locked(self, current: str | None) -> list[str]:
        folders = sorted(self._folders(), key=lambda v: v.number)
        kept = {v.name for v in folders[-self.keep:]} | ({current} if current else set())
        removed = []
        for version in folders:
            if version.name in kept:
                continue
            # rename first so a reader sees the version gone, not half-deleted
            trash = self.root / f".trash-{version.name}-{uuid.uuid4().hex[:8]}"
            os.rename(version.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(version.name)
        return removed

    # Reading ----------------------------------------------------------------------------------
    def _folders(self) -> list[Version]:
        """Every folder named like a version, manifest not read (may be damaged)."""
        if not self.versions_dir.is_dir():
            return []
        return [Version(p.name, p, {}) for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name)]

    def versions(self) -> list[Version]:
        """Versions whose manifest can be read, oldest first (hashes not checked: see load_verified)."""
        found = []
        for folder in sorted(self._folders(), key=lambda v: v.number):
            try:
                found.append(Version(folder.name, folder.path, read_manifest(folder.path)))
            except CorruptVersion:
                continue
        return found

    def load_verified(self, version: str | Version) -> Version:
        """The version with every file checked against its manifest; :class:`CorruptVersion` if not."""
        name = version.name if isinstance(version, Version) else version
        if not _VERSION_RE.match(name):
            raise UserError(f"{name!r} is not a version name like v000007")
        path = self.versions_dir / name
        if not path.is_dir():
            raise CorruptVersion(f"{name}: not in the store (pruned or never published)")
        return Version(name, path, verified_manifest(path))

    def publish_copy(self, folder: str | os.PathLike, manifest_extra: dict[str, Any] | None = None
                     ) -> Version:
        """Publish again the files of a version folder copied elsewhere (``folder``: model.onnx,
        [model.engine], manifest.json, checked against its manifest first) as a new version; its
        manifest keeps the copied one's entries, ``republished_from`` (the version copied) and
        ``manifest_extra``. No build and no gate: the engine passed them when first published."""
        folder = Path(folder)
        manifest = verified_manifest(folder)
        extra = {k: v for k, v in manifest.items() if k not in _RESERVED_KEYS}
        extra.update(manifest_extra or {}, republished_from=manifest["version"])
        engine = folder / ENGINE_FILE if ENGINE_FILE in manifest["files"] else None
        return self.publish(folder / ONNX_FILE, engine, extra)

    def _read_pointer(self) -> str | None:
        try:
            text = (self.root / POINTER_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return text if _VERSION_RE.match(text) else None

    def current_name(self) -> str | None:
        """The name in ``CURRENT`` without verifying it (cheap; for polling for new versions)."""
        return self._read_pointer()

    @staticmethod
    def version_number(name: str) -> int:
        """``"v000007"`` -> 7."""
        if not _VERSION_RE.match(name):
            raise UserError(f"{name!r} is not a version name like v000007")
        return int(name[1:])

    def resolve_current(self, attempts: int = 3) -> Resolution:
        """The current version if it verifies, else the newest older one that does.

        If the pointer moves while it is being verified (a writer published and pruned), it is
        read again rather than falling back.
        """
        problems: list[str] = []
        for _ in range(attempts):
            name = self._read_pointer()
            if name is None:
                if not (self.root / POINTER_FILE).exists():
                    return Resolution(None, problems)  # nothing published yet
                problems.append(f"{POINTER_FILE} does not name a version")
                break
            try:
                return Resolution(self.load_verified(name), problems)
            except CorruptVersion as err:
                if self._read_pointer() != name:
                    continue  # superseded while we read it: try the new current
                problems.append(str(err))
                break
        return Resolution(self._newest_good_before(name), problems)

    def _newest_good_before(self, name: str | None) -> Version | None:
        limit = int(name[1:]) if name else None
        candidates = sorted((v for v in self._folders() if limit is None or v.number < limit),
                            key=lambda v: v.number, reverse=True)
        for candidate in candidates:
            try:
                return self.load_verified(candidate.name)
            except CorruptVersion:
                continue
        return None

    def current(self) -> Version | None:
        """The version to serve (verified), or None if the store has no good version.

        A damaged current version is skipped for the newest good older one, with a warning.
        """
        resolution = self.resolve_current()
        for problem in resolution.problems:
            served = resolution.version.name if resolution.version else "nothing"
            log.warning("engine store %s: %s; serving %s", self.root, problem, served)
        return resolution.version
