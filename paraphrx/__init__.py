"""paraphrx: the library behind prep, train_sft.py and evaluate_paraphrx.py."""

import logging


class _DropKernelsHubNotice(logging.Filter):
    """bitsandbytes (>= 0.49, on CPUs with AVX512-BF16) tries at import to fetch a faster CPU 4-bit kernel from the Hub
    through the optional `kernels` package and, without it, logs "Failed to load CPU gemm_4bit_forward from
    kernels-community" on every command that imports it (through peft). Nothing fails: its own CPU kernel is used.
    This filter, set before anything imports bitsandbytes, drops only that record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHubNotice())
