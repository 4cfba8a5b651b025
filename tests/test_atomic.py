import os
import stat

import pytest

from transferkit.core.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def test_written_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "sub" / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert path.read_text() == "<html></html>"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_bytes(tmp_path / "a.png", b"old")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_replace_directory_swaps_and_restores_on_failure(tmp_path, monkeypatch):
    from transferkit.core.atomic import replace_directory

    target = tmp_path / "data"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_directory(new, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    again = tmp_path / "again"
    again.mkdir()
    real_replace = os.replace

    def failing(src, dst):
        if os.fspath(src).endswith("again"):
            raise OSError("disk trouble")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        replace_directory(again, target)
    monkeypatch.undo()
    assert (target / "new.txt").read_text() == "new"  # the previous folder is back in place


def test_replace_directory_replaces_a_symlink_without_touching_its_target(tmp_path):
    from transferkit.core.atomic import replace_directory

    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(real)
    new = tmp_path / "new"
    new.mkdir()
    replace_directory(new, link)
    assert link.is_dir() and not link.is_symlink()
    assert (real / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
