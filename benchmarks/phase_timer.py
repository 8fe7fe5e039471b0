"""Run any checkout's `train_sft.py` unchanged, with its phases timed: the child process of benchmarks/bench_run.py.

    python benchmarks/phase_timer.py --timeline OUT.json -- TREE/train_sft.py RECIPE [--key value ...]

TREE goes first on sys.path, so the script imports that checkout's `paraphrx` and `prep` (not this one's), and runs
with runpy as `__main__`. Before it starts, transformers' `Trainer` (and TRL's `SFTTrainer`) get timers around
`evaluate`, `_save_checkpoint` and `save_model` (outermost calls only), a count of the real tokens each
`training_step` trains, and a callback that marks the end of optimizer steps; the GPU is synchronized only where a
phase starts or ends. Everything touched belongs to the libraries, which every checkout uses the same way, so
the code under test gets no benchmark switch. At exit, however the script ended, the timeline is written as JSON
(times in seconds since the epoch); bench_run.py turns it into phases.

Also recorded: torch.compile's compiled frames (dynamo's counter) at each mark and interval, where its time went
until the first step ended (dynamo's timers: tracing, backend, kernels, guards), each recompilation with its reason (the `recompiles` log of `TORCH_LOGS`), peak GPU memory, and where start-up goes: when the script
starts, when the model load (`PreTrainedModel.from_pretrained`) and the trainer's construction (of which SFTTrainer's
dataset preparation) begin and end, and when training begins.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import logging
import os
import runpy
import signal
import sys
import time
from pathlib import Path


class Timeline:
    def __init__(self):
        self.intervals: list[dict] = []  # {"kind": "evaluate" | "save", "start", "end", ...}
        self.first_step_end: float | None = None
        self.last_step_end: float | None = None
        self.compiles_at: dict[str, int] = {}
        self.recompiles: list[dict] = []
        self.steps = 0
        self.steps_run = 0  # optimizer steps this process ran (a resumed run starts past step 0)
        self.max_steps = 0
        self.tokens = None  # real tokens trained, summed on the device: read once at the end
        self.first_step_tokens = 0
        self.open: dict[str, dict] = {}  # the outermost open interval per kind
        # start-up marks: script_start, model_load_start/_end, trainer_init_start/_end, train_begin (first of each)
        self.marks: dict[str, float] = {}
        self.dataset_prep_s = 0.0  # SFTTrainer's dataset preparation inside the trainer's construction
        self.compile_s_at_first_step: dict[str, float] = {}  # where torch.compile's time went until then

    def to_json(self, **extra) -> dict:
        trained = int(self.tokens) if self.tokens is not None else 0
        return {
            "intervals": self.intervals,
            "first_step_end": self.first_step_end,
            "last_step_end": self.last_step_end,
            "steps": self.steps,
            "steps_run": self.steps_run,
            "max_steps": self.max_steps,
            "train_tokens": trained,
            "first_step_tokens": self.first_step_tokens,
            "compiles_at": self.compiles_at,
            "compile_s_at_first_step": self.compile_s_at_first_step,
            "recompiles": self.recompiles,
            "marks": self.marks,
            "dataset_prep_s": self.dataset_prep_s,
            **extra,
        }


TIMELINE = Timeline()


def synchronize() -> None:
    """Wait for queued GPU work, so that a phase boundary is where the work is, not where Python was."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def compiled_frames() -> int:
    """Frames torch.compile has compiled in this process (first compilations and recompilations)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


# dynamo's own timers (`torch._dynamo.utils.compile_times`) that split a compilation: all of it, tracing the Python,
# the backend (AOT autograd + inductor: graphs from the FX cache, kernels compiled or loaded), building guards.
COMPILE_TIMERS = {
    "total": "_compile.compile_inner",
    "tracing": "bytecode_tracing",
    "backend": "OutputGraph.call_user_compiler",
    "kernels": "async_compile.wait",
    "guards": "build_guards",
}


def compile_seconds() -> dict[str, float]:
    """Seconds torch.compile has spent so far in this process, split by COMPILE_TIMERS ({} before any compile)."""
    if "torch._dynamo" not in sys.modules:
        return {}
    from torch._dynamo.utils import compile_times

    timers = compile_times(repr="csv", aggregate=True)
    if not isinstance(timers, tuple):
        return {}
    seconds = dict(zip(timers[0], (float(v) for v in timers[1])))
    return {name: seconds[key] for name, key in COMPILE_TIMERS.items() if key in seconds}


def dataset_size(dataset) -> tuple[int | None, int | None]:
    """(rows, tokens) of a tokenized dataset; (None, None) when it is not one yet."""
    try:
        if "input_ids" not in dataset.column_names:
            return len(dataset), None
        import pyarrow.compute as pc

        lengths = pc.list_value_length(dataset.with_format("arrow")["input_ids"])
        return len(dataset), int(pc.sum(lengths).as_py() or 0)
    except (AttributeError, TypeError):
        return None, None


def timed(kind: str, method):
    """Wrap a Trainer method: the outermost call of each kind is one interval of the timeline."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        outermost = kind not in TIMELINE.open
        if outermost:
            synchronize()
            TIMELINE.open[kind] = {"kind": kind, "start": time.time(), "compiles_before": compiled_frames()}
        interval = TIMELINE.open[kind]
        if kind == "evaluate":
            interval.setdefault("prefix", kwargs.get("metric_key_prefix", args[2] if len(args) > 2 else "eval"))
            dataset = kwargs.get("eval_dataset", args[0] if args else None)
            if interval.get("tokens") is None and not isinstance(dataset, (str, dict)):  # SFTTrainer's is raw, then
                interval["rows"], interval["tokens"] = dataset_size(self.eval_dataset if dataset is None else dataset)
        if not outermost:
            return method(self, *args, **kwargs)
        try:
            result = method(self, *args, **kwargs)
            if kind == "evaluate" and isinstance(result, dict):
                interval["loss"] = result.get(f"{interval['prefix']}_loss")
            return result
        finally:
            synchronize()
            interval.update(end=time.time(), compiles_after=compiled_frames(), step=self.state.global_step)
            del TIMELINE.open[kind]
            TIMELINE.intervals.append(interval)

    return wrapper


def marked(name: str, method, inside: str | None = None):
    """Wrap a library function: the first call's start and end become the marks `<name>_start` / `<name>_end` (a
    call nested in it is not timed again); with `inside`, only calls made while `<inside>_start` is open count, and
    their time adds up in `dataset_prep_s`."""
    depth = 0

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        nonlocal depth
        marks = TIMELINE.marks
        if inside is not None and not (f"{inside}_start" in marks and f"{inside}_end" not in marks):
            return method(*args, **kwargs)
        first = depth == 0 and f"{name}_start" not in marks
        start = time.time()
        if first and inside is None:
            synchronize()
            marks[f"{name}_start"] = start = time.time()
        depth += 1
        try:
            return method(*args, **kwargs)
        finally:
            depth -= 1
            if inside is not None and depth == 0:
                TIMELINE.dataset_prep_s += time.time() - start
            elif first:
                synchronize()
                marks[f"{name}_end"] = time.time()

    return wrapper


def counting_training_step(method):
    @functools.wraps(method)
    def training_step(self, model, inputs, *args, **kwargs):
        if "attention_mask" in inputs:  # padded batches: the mask marks the real tokens
            real = inputs["attention_mask"].sum()
        else:  # padding-free: only a pad_to_multiple_of tail is padding
            real = (inputs["input_ids"] != self.processing_class.pad_token_id).sum()
        TIMELINE.tokens = real if TIMELINE.tokens is None else TIMELINE.tokens + real.to(TIMELINE.tokens.device)
        return method(self, model, inputs, *args, **kwargs)

    return training_step


def step_marks_callback():
    from transformers import TrainerCallback

    class StepMarks(TrainerCallback):
        """The end of the first optimizer step (start-up ends) and of the last one (training ends). It synchronizes
        only at steps that an evaluation, a save or the end of training follows, which wait for the GPU anyway."""

        def on_train_begin(self, args, state, control, **kwargs):
            TIMELINE.marks.setdefault("train_begin", time.time())

        def on_step_end(self, args, state, control, **kwargs):
            first = TIMELINE.first_step_end is None
            if (
                first
                or control.should_evaluate
                or control.should_save
                or control.should_training_stop
                or state.global_step >= state.max_steps
            ):
                synchronize()
            now = time.time()
            if first:
                TIMELINE.first_step_end = now
                TIMELINE.first_step_tokens = int(TIMELINE.tokens) if TIMELINE.tokens is not None else 0
                TIMELINE.compiles_at["first_step_end"] = compiled_frames()
                TIMELINE.compile_s_at_first_step = compile_seconds()
            TIMELINE.last_step_end, TIMELINE.steps, TIMELINE.max_steps = now, state.global_step, state.max_steps
            TIMELINE.steps_run += 1
            TIMELINE.compiles_at["last_step_end"] = compiled_frames()

    return StepMarks()


class RecompileLog(logging.Handler):
    """Each `Recompiling function ...` message of dynamo's recompiles log, with its time."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        TIMELINE.recompiles.append({"time": record.created, "reason": " | ".join(message.splitlines()[:3])[:400]})


def install() -> None:
    """Patch the library classes the training scripts use; nothing of the script itself."""
    from transformers import Trainer

    classes = [Trainer]
    try:
        from trl import SFTTrainer

        classes.append(SFTTrainer)
    except ImportError:
        pass
    for cls in classes:
        for name, kind in (("evaluate", "evaluate"), ("_save_checkpoint", "save"), ("save_model", "save")):
            if name in vars(cls):
                setattr(cls, name, timed(kind, vars(cls)[name]))
    Trainer.training_step = counting_training_step(Trainer.training_step)
    from transformers import PreTrainedModel

    load = PreTrainedModel.__dict__["from_pretrained"].__func__
    PreTrainedModel.from_pretrained = classmethod(marked("model_load", load))
    for cls in reversed(classes):  # SFTTrainer.__init__ calls Trainer.__init__: the outermost call is marked
        if "__init__" in vars(cls):
            cls.__init__ = marked("trainer_init", vars(cls)["__init__"])
        if "_prepare_dataset" in vars(cls):
            cls._prepare_dataset = marked("dataset_prep", vars(cls)["_prepare_dataset"], inside="trainer_init")
    init = Trainer.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(step_marks_callback())

    Trainer.__init__ = __init__
    watch_recompiles()


def watch_recompiles() -> RecompileLog | None:
    """Turn on dynamo's recompiles log (as TORCH_LOGS=recompiles does: the reasons also go to stderr) and record
    each message in the timeline. None where this torch has no such log."""
    try:
        import torch._logging

        torch._logging.set_logs(recompiles=True)
    except (ImportError, AttributeError, ValueError):
        return None
    handler = RecompileLog()
    logging.getLogger("torch._dynamo.guards.__recompiles").addHandler(handler)
    return handler


def peak_gpu_gib() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeline", type=Path, required=True, help="where to write the timeline JSON")
    parser.add_argument("script", type=Path, help="a checkout's train_sft.py")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments (after --)")
    args = parser.parse_args()
    script = args.script.resolve()
    tree = script.parent
    sys.path.insert(0, str(tree))  # ahead of this checkout's editable install
    script_args = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
    sys.argv = [str(script), *script_args]
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # bench_run asks for the stacks of a run it stops
    install()
    TIMELINE.marks["script_start"] = time.time()
    code = 0
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        raise
    except BaseException:
        code = 1
        raise
    finally:
        library = sys.modules.get("paraphrx")
        timeline = TIMELINE.to_json(
            exit_code=code,
            end=time.time(),
            peak_gpu_gib=peak_gpu_gib(),
            compiles_at_exit=compiled_frames(),
            tree=str(tree),
            paraphrx_imported_from=str(Path(library.__file__).parent) if library and library.__file__ else None,
        )
        tmp = args.timeline.with_name(args.timeline.name + ".tmp")
        tmp.write_text(json.dumps(timeline, indent=1))
        os.replace(tmp, args.timeline)


if __name__ == "__main__":
    main()
