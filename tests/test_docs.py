"""The commands README.md and docs/*.md show, run as written.

Every ```bash block runs in one copy of the repository, in the order a reader meets them (README, then prep, training,
evaluation, speed), on the CPU and offline (`HF_HUB_OFFLINE=1`), with `.venv/bin` first on PATH as after `source
.venv/bin/activate`. The copy starts where `make demo` leaves a fresh clone's data: the shared tiny model in
`models/tiny-gemma2` and a prepared dataset in `data/paraphrx-alpaca`. A block that cannot run there (a GPU, the Hub,
the test suite itself) carries `<!-- docs-test: skip, <why> -->` on the line before it, in the Markdown, where a reader
sees it too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *(REPO / "docs" / f"{name}.md" for name in ("prep", "training", "evaluation", "speed"))]
MARKER = re.compile(r"<!-- docs-test: skip, (\S.*?) -->")
# What a reader of the first hour relies on: these must stay among the blocks that run.
MUST_RUN = [
    "python train_sft.py recipes/tiny/bucket1.yaml --max_steps 5",
    "python evaluate_paraphrx.py --adapters outputs/try",
    "python -m paraphrx.label_mask recipes/tiny/bucket1.yaml",
    "make prep DATA_PATHS=",
    "make train-tiny",
    "make eval-tiny",
    "--max_prompts 2 --max_paraphrases_per_prompt 12",
]


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    text: str
    skip: str | None  # why it does not run here

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def bash_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
            marker = MARKER.fullmatch(before)
            blocks.append(Block(path, i + 1, "\n".join(lines[i + 1 : end]), marker.group(1) if marker else None))
            i = end
        i += 1
    return blocks


BLOCKS = [block for path in DOCS for block in bash_blocks(path)]


def test_every_doc_is_read_and_every_marker_stands_before_a_block_with_its_reason():
    assert sorted(REPO.glob("docs/*.md")) == sorted(DOCS[1:]), "a new docs/*.md: add it to DOCS in reading order"
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("<!--") and "docs-test" in line:
                assert MARKER.fullmatch(line.strip()), f"{path.name}:{i + 1}: <!-- docs-test: skip, <why> -->"
                following = next(x.strip() for x in lines[i + 1 :] if x.strip())
                assert following == "```bash", f"{path.name}:{i + 1}: a marker stands right before a bash block"
    running = "\n".join(block.text for block in BLOCKS if block.skip is None)
    assert [command for command in MUST_RUN if command not in running] == []


@pytest.fixture(scope="session")
def clone(tmp_path_factory, tiny_model_dir, prepared_dataset_dir) -> Path:
    """The repository's files (tracked, and new ones git does not ignore) in a fresh folder, with the test session's
    tiny model and prepared dataset where `make demo` puts them, and this checkout's environment linked in."""
    root = tmp_path_factory.mktemp("clone")
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    stamp = REPO / ".venv" / ".installed"
    if stamp.exists():  # `make` must find the environment built: never reinstall it from here
        os.utime(root / "pyproject.toml", (stamp.stat().st_mtime - 1, stamp.stat().st_mtime - 1))
    shutil.copytree(tiny_model_dir, root / "models" / "tiny-gemma2")
    shutil.copytree(prepared_dataset_dir, root / "data" / "paraphrx-alpaca")
    return root


def _environment(root: Path) -> dict:
    torch, _, index = (
        (REPO / ".venv" / ".installed").read_text().strip().partition(" ")
        if (REPO / ".venv" / ".installed").exists()
        else ("", "", "")
    )
    env = {
        **os.environ,
        "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "VIRTUAL_ENV": str(REPO / ".venv"),
    }
    if torch:
        env |= {"TORCH": torch, "TORCH_INDEX": index}  # the Makefile's stamp check sees the environment as built
    env.pop("MAKEFLAGS", None)
    return env


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_the_documented_commands_run(block: Block, clone: Path):
    if block.skip:
        pytest.skip(block.skip)
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.text],
        cwd=clone,
        env=_environment(clone),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, (
        f"{block.name} failed (exit {proc.returncode}):\n{block.text}\n---\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
