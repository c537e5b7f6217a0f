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


def test_entries_list_every_stored_digest_with_its_time(artifacts):
    first, second = artifacts.put(b"one"), artifacts.put(b"two")
    listed = dict(artifacts.entries())
    assert set(listed) == {first, second}
    assert listed[first] == artifacts.path_for(first).stat().st_mtime


def test_remove_frees_the_bytes_or_puts_them_back_when_kept(artifacts):
    digest = artifacts.put(b"model bytes")
    assert artifacts.remove(digest, keep=lambda: True) == 0
    assert artifacts.get(digest) == b"model bytes"
    seen_during = []
    assert artifacts.remove(digest, keep=lambda: seen_during.append(artifacts.exists(digest)) or False) == 11
    assert seen_during == [False]  # out of reach while the keeper was asked
    assert not artifacts.exists(digest)
    assert artifacts.remove(digest, keep=lambda: False) == 0  # gone already
    assert list((artifacts.root / "tmp").iterdir()) == []


def test_a_failing_keeper_leaves_the_bytes_in_place(artifacts):
    digest = artifacts.put(b"model bytes")

    def keeper():
        raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        artifacts.remove(digest, keep=keeper)
    assert artifacts.get(digest) == b"model bytes"


def test_a_put_during_a_removal_stores_the_bytes_anew(artifacts):
    digest = artifacts.put(b"model bytes")

    def registered_meanwhile_then_judged_unused():
        artifacts.put(b"model bytes")
        return False

    assert artifacts.remove(digest, keep=registered_meanwhile_then_judged_unused) == 11
    assert artifacts.get(digest) == b"model bytes"


def test_bytes_a_dead_collector_left_out_of_reach_are_put_back(tmp_path):
    live = FilesystemArtifactStore(tmp_path)
    digest = live.put(b"model bytes")
    held = live.root / "tmp" / f"{digest[:12]}.collecting.dead"
    os.rename(live.path_for(digest), held)
    assert dict(live.entries()) == {}  # maybe a live collector's: left alone for a minute
    assert held.exists()

    restarted = FilesystemArtifactStore(tmp_path, abandoned_after_s=0)

    assert set(dict(restarted.entries())) == {digest}
    assert restarted.get(digest) == b"model bytes"
    assert not held.exists()
