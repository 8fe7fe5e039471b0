"""The run lock: exclusive, non-blocking, naming its holder, gone with its holder."""

import json
import os

import pytest

from paraphrx.run_lock import FolderInUseError, FolderLock, holder_description, lock_path


def test_a_second_lock_is_refused_naming_the_holder_and_released_with_it(tmp_path):
    folder = tmp_path / "outputs" / "run"
    with FolderLock(folder) as first:
        who = json.loads(lock_path(folder).read_text())
        assert who["pid"] == os.getpid() and who["host"] and who["command"] and who["started"].startswith("20")
        with pytest.raises(FolderInUseError, match=rf"{folder} is in use by another run \(pid {os.getpid()} on "):
            FolderLock(folder)  # another open file description: refused even within one process
        assert first.fd is not None
    FolderLock(folder).release()
    assert lock_path(folder) == tmp_path / "outputs" / ".run.lock" and not folder.exists()


def test_a_half_written_holder_record_still_gives_one_line():
    assert holder_description('{"pid": 12') == "details unknown (it is still starting)"
    assert holder_description('{"pid": 1, "host": "h", "started": "t", "command": "c"}') == "pid 1 on h, started t: c"
