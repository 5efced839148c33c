import hashlib
from pathlib import Path

import pytest

from app.storage import BlobStore, BlobTooLarge


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", tmp_path / "tmp")


def files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_blob_is_named_by_its_sha256_and_stored_once(store: BlobStore) -> None:
    data = b"hello" * 1000
    for _ in range(2):
        writer = store.writer(limit=10_000)
        writer.write(data[:100])
        writer.write(data[100:])
        sha = writer.commit()
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.path(sha).read_bytes() == data
    assert files(store.blobs_dir) == [store.path(sha)]
    assert files(store.tmp_dir) == []


def test_limit_stops_the_write_and_abort_leaves_nothing(store: BlobStore) -> None:
    writer = store.writer(limit=10)
    writer.write(b"12345")
    with pytest.raises(BlobTooLarge):
        writer.write(b"123456")
    writer.abort()
    assert files(store.tmp_dir) == [] and files(store.blobs_dir) == []


def test_put_file_and_remove(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "x.bin"
    source.write_bytes(b"abc")
    sha, size = store.put_file(source)
    assert (size, store.exists(sha)) == (3, True)
    with pytest.raises(RuntimeError), store.removing(sha):  # the commit failed: the blob comes back
        assert not store.exists(sha)
        raise RuntimeError("commit failed")
    assert store.exists(sha)
    with store.removing(sha):
        pass
    assert not store.exists(sha) and files(store.tmp_dir) == []


def test_path_refuses_names_that_are_not_sha256(store: BlobStore) -> None:
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")
