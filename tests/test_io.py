"""Atomic writes: all or nothing, and the file mode a plain write would give."""
import os
import stat

import pytest
from qadtr.io import atomic_path, write_json


def test_new_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


def test_overwritten_file_keeps_its_mode(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("{}")
    target.chmod(0o640)
    write_json(target, {"a": 2})
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert '"a": 2' in target.read_text()


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
