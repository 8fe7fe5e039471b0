"""Importing paraphrx keeps bitsandbytes' kernels-community notice out of every command's output."""

import logging
import subprocess
import sys

from tests.conftest import REPO


def test_only_the_kernels_hub_notice_is_dropped():
    import paraphrx  # noqa: F401 - installs the filter

    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")

    def kept(message: str) -> bool:
        return all(
            f.filter(logging.LogRecord(ops.name, logging.WARNING, "ops.py", 1, message, (), None)) for f in ops.filters
        )

    assert not kept("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...")
    assert kept("some other bitsandbytes warning")


def test_importing_bitsandbytes_after_paraphrx_prints_no_notice():
    proc = subprocess.run(
        [sys.executable, "-c", "import paraphrx, bitsandbytes"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "kernels-community" not in proc.stderr, proc.stderr[-2000:]
