"""OUT.part and its control file: resume, starting over, locking, the final rename."""
from __future__ import annotations

import json

import pytest

from client.storage import ContentKey, PartFile
from common.errors import StorageError

KEY = ContentKey(size=1000, piece_size=256, sha256="aa" * 32, root="bb" * 32,
                 validators={"http://m/f": '"etag1"'})


def _run_and_checkpoint(out, key=KEY, pieces=(0, 2)) -> None:
    store = PartFile(out)
    store.open(key, 4)
    for p in pieces:
        store.pwrite(p * 256, bytes([p + 1]) * 256)
        store.mark_done(p)
    snap = store.snapshot()
    assert snap is not None
    store.checkpoint(snap)
    store.close()  # as if killed: no finish


def test_resume_keeps_verified_pieces(tmp_path):
    out = tmp_path / "f"
    _run_and_checkpoint(out)
    store = PartFile(out)
    done, note = store.open(KEY, 4)
    assert done == {0, 2} and "resuming: 2 of 4" in note
    assert store.pread(512, 256) == bytes([3]) * 256
    store.close()


def test_only_checkpointed_pieces_are_vouched_for(tmp_path):
    out = tmp_path / "f"
    store = PartFile(out)
    store.open(KEY, 4)
    store.pwrite(0, b"x" * 256)
    store.mark_done(0)  # verified, but killed before the next checkpoint
    store.close()
    done, _ = PartFile(out).open(KEY, 4)
    assert done == set()


@pytest.mark.parametrize("changed", [
    ContentKey(1000, 256, "cc" * 32, "bb" * 32),  # other sha256, same claimed root
    ContentKey(1000, 256, "aa" * 32, "dd" * 32),  # other root
    ContentKey(1001, 256, "aa" * 32, "bb" * 32),  # other size
    ContentKey(1000, 256, "", "", {"http://m/f": '"etag2"'}),  # bare URL, new ETag
])
def test_changed_content_starts_over_and_says_so(tmp_path, changed):
    out = tmp_path / "f"
    _run_and_checkpoint(out)
    store = PartFile(out)
    done, note = store.open(changed, 4)
    assert done == set() and "starting over" in note
    assert store.pread(0, 256) == bytes(256)  # the old bytes are gone
    store.close()


def test_same_validator_resumes_a_bare_url(tmp_path):
    out = tmp_path / "f"
    bare = ContentKey(1000, 256, validators={"http://m/f": '"etag1"'})
    _run_and_checkpoint(out, key=bare)
    done, _ = PartFile(out).open(bare, 4)
    assert done == {0, 2}


def test_corrupt_control_file_is_never_trusted(tmp_path):
    out = tmp_path / "f"
    _run_and_checkpoint(out)
    (tmp_path / "f.mfetch").write_text("{not json")
    done, note = PartFile(out).open(KEY, 4)
    assert done == set() and "starting over" in note


def test_control_file_records_identity_and_bitfield(tmp_path):
    out = tmp_path / "f"
    _run_and_checkpoint(out)
    doc = json.loads((tmp_path / "f.mfetch").read_text())
    assert doc["sha256"] == KEY.sha256 and doc["size"] == 1000 and doc["pieces"] == 4
    assert doc["validators"] == KEY.validators


def test_two_writers_of_one_output_are_refused(tmp_path):
    out = tmp_path / "f"
    first = PartFile(out)
    first.open(KEY, 4)
    with pytest.raises(StorageError, match="another mfetch"):
        PartFile(out).open(KEY, 4)
    first.close()


def test_finish_renames_and_removes_the_control_file(tmp_path):
    out = tmp_path / "f"
    store = PartFile(out)
    store.open(KEY, 4)
    store.pwrite(0, b"z" * 1000)
    assert store.finish() == out
    assert out.read_bytes() == b"z" * 1000
    assert not (tmp_path / "f.part").exists() and not (tmp_path / "f.mfetch").exists()


def test_unwritable_place_is_a_storage_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError, match="cannot write"):
        PartFile(tmp_path / "file" / "f").open(KEY, 4)


@pytest.mark.parametrize("durable", [True, False])
def test_only_a_durable_download_waits_for_the_disk(tmp_path, monkeypatch, durable):
    import os

    flushed: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "fdatasync",
                        lambda fd: (flushed.append("fdatasync"), real_fdatasync(fd))[1])
    out = tmp_path / "f"
    store = PartFile(out, durable=durable)
    store.open(KEY, 4)
    for p in range(4):
        store.pwrite(p * 256, bytes([p + 1]) * (256 if p < 3 else 232))
        store.mark_done(p)
    store.checkpoint(store.snapshot() or b"")
    store.finish()
    assert out.read_bytes() == b"".join(bytes([p + 1]) * (256 if p < 3 else 232)
                                        for p in range(4))
    if durable:  # data before the control file vouches, the control file, the file, its folder
        assert "fdatasync" in flushed and flushed.count("fsync") >= 3
    else:
        assert flushed == []
