"""The one atomic writer (``supernet.atomic``): modes as a plain open would give them, the
previous mode kept, nothing left behind and the old bytes intact when a write fails."""

from __future__ import annotations

import os
import stat

import pytest

from supernet.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_gets_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o644
    assert (tmp_path / "a.txt").read_text() == "x\n"


def test_previous_mode_is_kept(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"old")
    p.chmod(0o640)
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and _mode(p) == 0o640


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w", newline="") as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert p.read_text() == "old\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.csv"]


def test_lut_writers_go_through_it(tmp_path):
    from profiler.lut import write_rows_atomic

    old = os.umask(0o022)
    try:
        write_rows_atomic(tmp_path / "t.csv", [])
    finally:
        os.umask(old)
    assert _mode(tmp_path / "t.csv") == 0o644
