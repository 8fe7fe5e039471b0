"""Folder swaps: at every instant the path holds the old complete folder or the new one, and what a killed run
leaves behind is cleaned by the next run, unless a live process still owns it. Kills happen at named calls."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paraphrx import atomic_folder as af
from tests.conftest import REPO, run_killed

# Writes `out` (a folder holding `version.txt` = the argument) through atomic_folder, the way prep does.
WRITER = """
import sys
from pathlib import Path
from paraphrx.atomic_folder import atomic_folder

out, version = Path(sys.argv[1]), sys.argv[2]
with atomic_folder(out) as tmp:
    (tmp / "big.bin").write_bytes(b"x" * 100_000)
    (tmp / "version.txt").write_text(version)
"""


# No RENAME_EXCHANGE (another OS or file system): a swap is two renames; die right after the first, `ds` -> `.ds.old-*`.
KILL_BETWEEN_THE_TWO_RENAMES = """
    import os
    from paraphrx import atomic_folder
    atomic_folder.exchange = lambda a, b: False
    rename = os.rename
    def rename_then_die(src, dst):
        rename(src, dst)
        if ".ds.old-" in str(dst):
            die()
    os.rename = rename_then_die
"""


@pytest.fixture
def old(tmp_path):
    """A complete folder `data/ds` (version "old") and the writer script."""
    (tmp_path / "writer.py").write_text(WRITER)
    out = tmp_path / "data" / "ds"
    with af.atomic_folder(out) as tmp:
        (tmp / "version.txt").write_text("old")
    return out


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."))


def test_swap_replaces_the_folder_and_leaves_nothing_behind(old):
    with af.atomic_folder(old) as tmp:
        (tmp / "version.txt").write_text("new")
    assert (old / "version.txt").read_text() == "new" and hidden(old) == []
    assert oct(old.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_error_keeps_the_old_folder(old):
    with pytest.raises(RuntimeError), af.atomic_folder(old) as tmp:
        (tmp / "version.txt").write_text("half")
        raise RuntimeError("bad input")
    assert (old / "version.txt").read_text() == "old" and hidden(old) == []


def test_killed_while_writing_leaves_the_old_folder_and_the_next_run_cleans(old, tmp_path):
    run_killed(
        ["writer.py", old, "new"],
        tmp_path,
        """
        import pathlib
        write_text = pathlib.Path.write_text
        def write_then_die(self, *args, **kwargs):
            if self.name == "version.txt":
                die()
            return write_text(self, *args, **kwargs)
        pathlib.Path.write_text = write_then_die
    """,
    )
    assert (old / "version.txt").read_text() == "old"
    [leftover] = hidden(old)
    assert leftover.startswith(".ds.tmp-") and (old.parent / leftover / "big.bin").stat().st_size == 100_000
    with af.atomic_folder(old) as tmp:
        (tmp / "version.txt").write_text("next")
    assert (old / "version.txt").read_text() == "next" and hidden(old) == []


def test_killed_right_after_the_exchange_holds_the_new_folder(old, tmp_path):
    run_killed(
        ["writer.py", old, "new"],
        tmp_path,
        """
        from paraphrx import atomic_folder
        exchange = atomic_folder.exchange
        def exchange_then_die(a, b):
            assert exchange(a, b), "RENAME_EXCHANGE must be available on this Linux file system"
            die()
        atomic_folder.exchange = exchange_then_die
    """,
    )
    assert (old / "version.txt").read_text() == "new"
    [leftover] = hidden(old)  # the old folder, under the temporary name
    assert (old.parent / leftover / "version.txt").read_text() == "old"
    assert af.clean_leftovers(old) == [old.parent / leftover] and hidden(old) == []


def test_without_exchange_a_kill_between_the_two_renames_is_recovered(old, tmp_path):
    """Another OS or file system: old -> .ds.old-*/ds, then new -> ds. Killed in between, no folder is at the path;
    the next run on it puts the old one back before doing anything else."""
    run_killed(["writer.py", old, "new"], tmp_path, KILL_BETWEEN_THE_TWO_RENAMES)
    assert not old.exists()
    af.recover_folder(old)
    assert (old / "version.txt").read_text() == "old"
    af.clean_leftovers(old)
    assert hidden(old) == []


def test_fallback_swap_without_exchange(old, monkeypatch):
    monkeypatch.setattr(af, "exchange", lambda a, b: False)
    with af.atomic_folder(old) as tmp:
        (tmp / "version.txt").write_text("new")
    assert (old / "version.txt").read_text() == "new" and hidden(old) == []


def test_a_leftover_a_live_process_owns_is_left_alone(old, tmp_path):
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from paraphrx.atomic_folder import owned_folder, leftover_prefix\n"
                "out = Path(sys.argv[1]); path, fd = owned_folder(out.parent, leftover_prefix(out, 'tmp'))\n"
                "print(path, flush=True); time.sleep(600)"
            ),
            str(old),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        building = Path(owner.stdout.readline().strip())
        assert building.is_dir()
        assert af.clean_leftovers(old) == [] and building.is_dir()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    time.sleep(0.05)
    assert af.clean_leftovers(old) == [building] and not building.exists()


def test_make_clean_removes_leftovers(tmp_path):
    (tmp_path / "data" / ".ds.tmp-abc").mkdir(parents=True)
    (tmp_path / "data" / ".ds.old-def" / "ds").mkdir(parents=True)
    (tmp_path / "data" / "keep.json").write_text("[]")
    subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "clean", "DATASET=data/ds"], cwd=tmp_path, check=True)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keep.json"]


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        af.write_text_atomic(target, 123)  # not text: fails while writing the temporary file
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    af.write_text_atomic(target, "new")
    assert target.read_text() == "new"
