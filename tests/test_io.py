"""Atomic writes: a reader sees the old file or the new one, and a failed directory write leaves nothing."""

import os

import pytest

from grpo import io


def test_write_text_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    io.write_json(path, {"x": 1})
    io.write_json(path, {"x": 2})
    assert path.read_text().strip().endswith("}") and '"x": 2' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_appears_only_when_complete(tmp_path):
    final = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed mid-write")
    assert not final.exists() and list(tmp_path.iterdir()) == []  # the temp folder is gone too
    with io.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("w")
    assert (final / "weights").read_text() == "w"


def test_atomic_dir_refuses_a_non_empty_target_unless_replacing(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("keep")
    with pytest.raises(FileExistsError):
        with io.atomic_dir(final) as tmp:
            (tmp / "new").write_text("n")
    assert (final / "old").read_text() == "keep"
    with io.atomic_dir(final, replace=True) as tmp:
        (tmp / "new").write_text("n")
    assert os.listdir(final) == ["new"]
