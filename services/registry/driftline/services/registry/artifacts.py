"""Content-addressed artifact storage: bytes are filed under their sha256 and verified on every read.

``ArtifactStore`` is the whole interface a backend implements (an S3 backend would key objects by
digest and verify the same way); ``FilesystemArtifactStore`` is the local one.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from driftline.kit.errors import DataLoss, InvalidArgument, NotFound, PermissionDenied

log = structlog.get_logger(__name__)

_DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """A lowercase hex sha256, or InvalidArgument: digests are the only keys, never paths."""
    if not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"not a sha256 hex digest: {digest[:80]!r}")
    return digest


class ArtifactStore(abc.ABC):
    """Immutable blobs keyed by their sha256."""

    @abc.abstractmethod
    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its sha256 hex digest. Storing bytes that are
        there already renews their time (see ``entries``)."""

    @abc.abstractmethod
    def get(self, digest: str) -> bytes:
        """The bytes stored under ``digest``. NotFound when absent; DataLoss when they no longer
        hash to ``digest``."""

    @abc.abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether something is stored under ``digest`` (not verified)."""

    @abc.abstractmethod
    def entries(self) -> Iterator[tuple[str, float]]:
        """Every stored digest with the time (epoch seconds) it was last put."""

    @abc.abstractmethod
    def remove(self, digest: str, keep: Callable[[], bool]) -> int:
        """Delete ``digest``'s bytes unless ``keep()``, asked once they are out of reach (a
        concurrent ``put`` of the same bytes stores them anew): the bytes freed, 0 when kept
        or gone already."""


class FilesystemArtifactStore(ArtifactStore):
    """Files at ``<root>/sha256/<d[0:2]>/<d[2:4]>/<digest>``, written atomically, read without
    following symlinks, and confined to ``root``."""

    def __init__(self, root: Path, *, abandoned_after_s: float = 60.0) -> None:
        """``abandoned_after_s``: how long bytes a collector took out of reach may stay there
        before they count as left by a collector that died, and are put back."""
        root.mkdir(parents=True, exist_ok=True)
        self._abandoned_after_s = abandoned_after_s
        # The root itself may be a symlink an operator chose (/data -> /mnt/disk); nothing under it may.
        self.root = root.resolve(strict=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def path_for(self, digest: str) -> Path:
        """Where ``digest`` lives; refuses anything that resolves outside the root."""
        check_digest(digest)
        path = self.root / "sha256" / digest[0:2] / digest[2:4] / digest
        self._confine(path)
        return path

    def _confine(self, path: Path) -> None:
        current = self.root
        for part in path.relative_to(self.root).parts:
            current = current / part
            if current.is_symlink():
                raise DataLoss(f"artifact store entry {current.relative_to(self.root)} is a symlink; refused")
        resolved = Path(os.path.realpath(path))
        if resolved != self.root and self.root not in resolved.parents:
            raise PermissionDenied("artifact path resolves outside the store root; refused")

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        path = self.path_for(digest)
        if path.exists():
            try:
                self.get(digest)
                # A registration of these bytes is under way: the collector leaves them alone.
                os.utime(path)
                return digest
            except (NotFound, FileNotFoundError):
                pass  # collected meanwhile: stored anew below
            except DataLoss:
                log.warning("artifact_repaired", sha256=digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._confine(path)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=digest[:12] + ".")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o444)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return digest

    def get(self, digest: str) -> bytes:
        path = self.path_for(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"no artifact {digest}") from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise DataLoss(f"artifact {digest} is a symlink; refused") from err
            raise
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise DataLoss(f"artifact {digest} is not a regular file; refused")
            data = handle.read()
        actual = sha256_hex(data)
        if actual != digest:
            log.error("artifact_digest_mismatch", expected=digest, actual=actual)
            raise DataLoss(f"artifact {digest} is corrupt or was tampered with (sha256 {actual})")
        return data

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def entries(self) -> Iterator[tuple[str, float]]:
        self._recover()
        for path in (self.root / "sha256").glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"):
            if not _DIGEST.fullmatch(path.name) or path.is_symlink():
                continue
            try:
                yield path.name, path.stat().st_mtime
            except FileNotFoundError:
                continue  # removed meanwhile

    def _recover(self) -> None:
        """Put back what a collector that died mid-removal left out of reach (a live collector
        holds a file for one database query): the next collection judges it again."""
        for held in self._tmp.glob("*.collecting.*"):
            try:
                if time.time() - held.stat().st_ctime < self._abandoned_after_s:  # the rename set ctime
                    continue
                digest = sha256_hex(held.read_bytes())
                path = self.path_for(digest)
                path.parent.mkdir(parents=True, exist_ok=True)
                _restore(held, path)
            except FileNotFoundError:
                continue
            log.warning("artifact_recovered", sha256=digest)

    def remove(self, digest: str, keep: Callable[[], bool]) -> int:
        path = self.path_for(digest)
        # Out of reach first, under a name of its own: two collectors never remove the same file,
        # and a put from now on writes the bytes anew.
        held = self._tmp / f"{digest[:12]}.collecting.{uuid.uuid4().hex}"
        try:
            size = path.stat().st_size
            os.rename(path, held)
        except FileNotFoundError:
            return 0
        try:
            kept = keep()
        except BaseException:
            _restore(held, path)
            raise
        if kept:
            _restore(held, path)
            return 0
        held.unlink()
        _fsync_dir(path.parent)
        return size


def _restore(held: Path, path: Path) -> None:
    """Put ``held`` back at ``path``, unless a put stored the same bytes there meanwhile."""
    with contextlib.suppress(FileExistsError):
        os.link(held, path)
    held.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
