"""Tests of BlobStore on real files: layout, idempotent writes, verification, errors."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from store.blobs import CHUNK_SIZE, BlobStore
from store.errors import (
    BlobNotFoundError,
    CorruptBlobError,
    InvalidDigestError,
    StoreIOError,
)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path / "home")
    store.create_folders()
    return store


def blob_files(blobs: BlobStore) -> list[Path]:
    return sorted(path for path in blobs.root.rglob("*") if path.is_file())


def test_put_bytes_is_idempotent(blobs: BlobStore) -> None:
    first = blobs.put_bytes(b"hello")
    second = blobs.put_bytes(b"hello")

    assert first == hashlib.sha256(b"hello").hexdigest()
    assert second == first
    assert blob_files(blobs) == [blobs.path(first)]
    assert list(blobs.tmp_dir.iterdir()) == []


def test_blob_is_read_only(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"weights")

    mode = stat.S_IMODE(blobs.path(digest).stat().st_mode)

    assert mode == 0o444


def test_put_file_streams_multiple_chunks(blobs: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 12345)
    source = tmp_path / "big.bin"
    source.write_bytes(data)

    digest, size = blobs.put_file(source)

    assert digest == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert blobs.path(digest).read_bytes() == data


def test_put_file_of_empty_file(blobs: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.write_bytes(b"")

    digest, size = blobs.put_file(source)

    assert digest == hashlib.sha256(b"").hexdigest()
    assert size == 0
    assert blobs.has(digest)


def test_put_existing_blob_keeps_mtime(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"old content")
    path = blobs.path(digest)
    os.utime(path, (946684800, 946684800))

    blobs.put_bytes(b"old content")

    assert path.stat().st_mtime == 946684800
    assert blobs.created(digest) == "2000-01-01T00:00:00.000000+00:00"


def test_digest_and_path_are_inverses(blobs: BlobStore) -> None:
    digest = hashlib.sha256(b"x").hexdigest()

    path = blobs.path(digest)

    assert path == blobs.home / "blobs" / "sha256" / digest[:2] / digest[2:]
    assert len(path.name) == 62
    assert blobs.digest_of_path(path) == digest


def test_path_rejects_invalid_digests(blobs: BlobStore) -> None:
    for digest in ["ABCD", "A" * 64, "g" * 64, "a" * 63, "../" + "a" * 61]:
        with pytest.raises(InvalidDigestError) as caught:
            blobs.path(digest)
        assert str(caught.value) == (
            f"Invalid sha256 digest {digest!r}: expected 64 lowercase hexadecimal digits. "
            "Pass the full digest as printed by the store."
        )


def test_digest_of_foreign_path_rejected(blobs: BlobStore, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "ab" / ("c" * 62)

    with pytest.raises(InvalidDigestError) as caught:
        blobs.digest_of_path(path)

    assert str(caught.value) == (
        f"Path '{path}' is not a blob of this store: expected a file under '{blobs.root}'."
    )


def test_iter_digests_sorted_and_skips_strays(blobs: BlobStore) -> None:
    digests = [blobs.put_bytes(data) for data in (b"a", b"b", b"c")]
    (blobs.root / "README").write_text("not a blob")
    (blobs.root / digests[0][:2] / "short").write_text("not a blob")

    assert list(blobs.iter_digests()) == sorted(digests)


def test_verify_detects_changed_byte(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"abcdef")
    path = blobs.path(digest)
    assert blobs.verify(digest)

    path.chmod(0o644)
    path.write_bytes(b"abcdeF")

    assert not blobs.verify(digest)


def test_read_bytes_raises_for_corrupt_blob(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"abcdef")
    path = blobs.path(digest)
    path.chmod(0o644)
    path.write_bytes(b"abcdeF")

    with pytest.raises(CorruptBlobError) as caught:
        blobs.read_bytes(digest)

    actual = hashlib.sha256(b"abcdeF").hexdigest()
    assert str(caught.value) == (
        f"Blob '{path}' is corrupt: its bytes hash to {actual}, expected {digest}. "
        "Run verify to find every corrupt blob, then add the affected files again."
    )


def test_open_missing_blob(blobs: BlobStore) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()

    with pytest.raises(BlobNotFoundError) as caught:
        blobs.open(digest)

    assert str(caught.value) == (
        f"Blob {digest} not found at '{blobs.path(digest)}'. Add the file again, or run verify "
        "to list every missing blob."
    )


def test_delete_reports_whether_blob_existed(blobs: BlobStore) -> None:
    digest = blobs.put_bytes(b"to delete")

    assert blobs.delete(digest)
    assert not blobs.has(digest)
    assert not blobs.delete(digest)


def test_put_file_of_missing_source(blobs: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "missing.bin"

    with pytest.raises(StoreIOError) as caught:
        blobs.put_file(source)

    assert str(caught.value) == (
        f"Could not read '{source}': No such file or directory. Check that the path exists, "
        "then retry."
    )
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert caught.value.path == str(source)


def test_put_bytes_without_tmp_folder(blobs: BlobStore) -> None:
    blobs.tmp_dir.rmdir()

    with pytest.raises(StoreIOError) as caught:
        blobs.put_bytes(b"data")

    assert str(caught.value) == (
        f"Could not create a staging file in '{blobs.tmp_dir}': No such file or directory. "
        "Check that the path exists, then retry."
    )
