"""torch.compile's caches in one user folder: kept where the user chose, restored after, shared by concurrent runs."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

_COMPILE_ONCE = """
import json, torch
from torch._dynamo.utils import counters
from paraphrx.compile_cache import compile_cache_folder
with compile_cache_folder() as root:
    double = torch.compile(lambda x: torch.sin(x) * 2 + x.cumsum(0), dynamic=True)
    out = [double(torch.arange(n, dtype=torch.float64)).sum().item() for n in (5, 9)]
print(json.dumps({"root": root, "out": out, "hit": counters["inductor"]["fxgraph_cache_hit"],
                  "miss": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def test_compile_cache_folder_is_explicit_kept_when_chosen_and_restored(monkeypatch, tmp_path):
    from paraphrx import library_internals as internals
    from paraphrx.compile_cache import compile_cache_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", internals.inductor_default_cache_dir())  # what inductor writes
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with compile_cache_folder() as root:
        assert root == str(tmp_path / "xdg" / "paraphrx" / "torch_compile") == os.environ["TORCHINDUCTOR_CACHE_DIR"]
        assert os.environ["TRITON_CACHE_DIR"] == os.path.join(root, "triton")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == internals.inductor_default_cache_dir()
    assert "TRITON_CACHE_DIR" not in os.environ
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice stays
    with compile_cache_folder() as root:
        assert root == str(tmp_path / "mine") and os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine" / "triton")


def test_two_runs_share_the_compile_cache_and_a_third_finds_it(tmp_path):
    """Two processes compile the same graph into one cache folder at the same time, both correctly; a third process
    compiles nothing: the graph comes from the cache."""
    script = tmp_path / "compile_once.py"
    script.write_text(_COMPILE_ONCE)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(REPO)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    env.pop("TRITON_CACHE_DIR", None)

    def start():
        return subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(proc) -> dict:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        return json.loads(out.strip().splitlines()[-1])

    together = [start(), start()]
    results = [finish(proc) for proc in together]
    results.append(finish(start()))  # once both have finished
    expected = [sum(math.sin(i) * 2 + i * (i + 1) / 2 for i in range(n)) for n in (5, 9)]
    for result in results:
        assert result["root"] == str(tmp_path / "xdg" / "paraphrx" / "torch_compile")
        assert result["out"] == pytest.approx(expected, rel=1e-12)
    assert results[2]["hit"] >= 1 and results[2]["miss"] == 0, results
