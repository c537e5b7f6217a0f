"""The content-addressed store: round trip, verification on read, confinement to its root."""

from __future__ import annotations

import hashlib
import os

import pytest

from driftline.kit.errors import DataLoss, InvalidArgument, NotFound
from driftline.services.registry.artifacts import FilesystemArtifactStore


def test_bytes_are_stored_under_their_sha256_and_read_back(artifacts):
    digest = artifacts.put(b"model bytes")
    assert digest == hashlib.sha256(b"model bytes").hexdigest()
    assert artifacts.get(digest) == b"model bytes"
    assert artifacts.path_for(digest).relative_to(artifacts.root).parts == (
        "sha256",
        digest[:2],
        digest[2:4],
        digest,
    )


def test_storing_the_same_bytes_twice_keeps_one_file(artifacts):
    assert artifacts.put(b"same") == artifacts.put(b"same")
    files = [p for p in (artifacts.root / "sha256").rglob("*") if p.is_file()]
    assert len(files) == 1


def test_tampered_bytes_are_refused_with_data_loss(artifacts):
    digest = artifacts.put(b"original")
    path = artifacts.path_for(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(DataLoss, match="tampered"):
        artifacts.get(digest)


def test_a_corrupt_file_is_replaced_when_the_same_bytes_are_stored_again(artifacts):
    digest = artifacts.put(b"original")
    path = artifacts.path_for(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"bitrot")
    artifacts.put(b"original")
    assert artifacts.get(digest) == b"original"


def test_missing_artifact_is_not_found(artifacts):
    with pytest.raises(NotFound):
        artifacts.get("0" * 64)


@pytest.mark.parametrize(
    "digest",
    ["../../etc/passwd", "/etc/passwd", "A" * 64, "0" * 63, "0" * 65, ("0" * 62) + "/.", "..%2f" + "0" * 59],
)
def test_only_hex_digests_address_the_store(artifacts, digest):
    with pytest.raises(InvalidArgument):
        artifacts.get(digest)


def test_a_symlinked_artifact_is_refused(artifacts, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    digest = hashlib.sha256(b"not yours").hexdigest()
    path = artifacts.path_for(digest)
    path.parent.mkdir(parents=True)
    path.symlink_to(secret)
    with pytest.raises(DataLoss, match="symlink"):
        artifacts.get(digest)


def test_a_symlinked_directory_inside_the_store_is_refused(artifacts, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    digest = artifacts.put(b"x")
    (artifacts.root / "sha256" / digest[:2]).rename(tmp_path / "moved")
    (artifacts.root / "sha256" / digest[:2]).symlink_to(outside)
    with pytest.raises(DataLoss, match="symlink"):
        artifacts.get(digest)
    with pytest.raises(DataLoss, match="symlink"):
        artifacts.put(b"x")


def test_the_root_itself_may_be_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    store = FilesystemArtifactStore(tmp_path / "link")
    digest = store.put(b"ok")
    assert store.get(digest) == b"ok"
    assert (real / "sha256" / digest[:2] / digest[2:4] / digest).is_file()


def test_stored_files_are_read_only(artifacts):
    digest = artifacts.put(b"immutable")
    assert artifacts.path_for(digest).stat().st_mode & 0o222 == 0
