"""evaluate_paraphrx.py end to end on the tiny model: report files, the cache, re-scoring, and bad input as one line."""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import evaluate_paraphrx
from paraphrx.dataset_io import load_prepared
from paraphrx.eval import pipeline
from paraphrx.eval.config import EvalModelConfig
from paraphrx.eval.pipeline import EvalError
from tests.conftest import REPO, make_adapter, prepared_row, run_python, write_prepared


def _argv(tmp_path, dataset, adapters, *extra):
    return [
        "--dataset",
        str(dataset),
        "--adapters",
        *map(str, adapters),
        "--dtype",
        "float32",
        "--max_new_tokens",
        "6",
        "--max_paraphrases_per_prompt",
        "6",
        "--batch_size",
        "4",
        *_places(tmp_path),
        *extra,
    ]


def _places(tmp_path, name="run"):
    return [
        "--output_dir",
        str(tmp_path / "eval"),
        "--output_name",
        name,
        "--cache_dir",
        str(tmp_path / "cache"),
        "--log_dir",
        str(tmp_path / "logs"),
    ]


def _rescore_argv(tmp_path, *extra):
    """--recompute_metrics_only takes only where the generations are, the statistics and the judge."""
    return [*_places(tmp_path), "--recompute_metrics_only", *extra]


def test_end_to_end_report_cache_and_rescoring(tmp_path, prepared_dataset_dir, eval_adapters, monkeypatch):
    assert evaluate_paraphrx.main(_argv(tmp_path, prepared_dataset_dir, eval_adapters)) == 0
    out = tmp_path / "eval" / "run"
    assert sorted(p.name for p in out.iterdir()) == [
        "bucket_gap.png",
        "generations.jsonl",
        "report.md",
        "score_by_bucket.png",
        "style_drop.png",
        "summary.json",
    ]
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    columns = set(load_prepared(str(prepared_dataset_dir), "test").column_names)
    assert all(columns <= set(r) for r in records), "every column of the row, as the README says"
    assert summary["models"] == ["base", "tiny-bucket1", "tiny-bucket1-2"]
    assert summary["sources"] == ["alpaca", "gsm8k"]  # the test split holds one held-out prompt of each
    per_model = len(records) // 3
    assert 2 <= per_model <= 12 and len(records) == 3 * per_model  # 6 paraphrases at most per prompt
    by_model = {m: [r["generation"] for r in records if r["model"] == m] for m in summary["models"]}
    assert by_model["tiny-bucket1"] != by_model["base"]  # the adapters were really applied
    assert all("rougeL" in r and r["prompt"] for r in records)
    assert all("gsm8k_flexible" in r for r in records if r["source"] == "gsm8k")
    assert sum(r["instruct_type"] == "instruction_original" for r in records) == 3 * 2  # the original is kept
    assert summary["run"]["settings"]["dtype"] == "float32"
    assert "| tiny-bucket1-2 |" in (out / "report.md").read_text(encoding="utf-8")

    # Second run: everything is cached, so no model may be loaded; same answers.
    def no_model(*_):
        raise AssertionError("loaded a model although every answer was cached")

    monkeypatch.setattr(pipeline, "load_base_model", no_model)
    assert evaluate_paraphrx.main(_argv(tmp_path, prepared_dataset_dir, eval_adapters)) == 0
    again = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["generation"] for r in again] == [r["generation"] for r in records]

    # Re-scoring only: edit one stored answer into the reference; its scores follow, nothing is generated.
    again[0]["generation"] = again[0]["reference"]
    (out / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in again), encoding="utf-8")
    assert evaluate_paraphrx.main(_rescore_argv(tmp_path)) == 0
    rescored = json.loads((out / "generations.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert rescored["exact_match"] == 1.0 and rescored["rougeL"] == pytest.approx(1.0)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["run"]["recomputed"] is True

    # The intervals are seeded: the same seed gives the same summary, another seed other intervals, same values.
    def intervals(seed):
        argv = _rescore_argv(tmp_path, "--bootstrap_seed", seed)
        assert evaluate_paraphrx.main(argv) == 0
        saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        return saved["bootstrap"]["seed"], saved["analysis"]["gsm8k"]["metrics"]["gsm8k_flexible"]["models"]

    seed0, models0 = intervals("0")
    assert (seed0, models0) == (0, summary["analysis"]["gsm8k"]["metrics"]["gsm8k_flexible"]["models"])
    seed1, models1 = intervals("1")
    assert seed1 == 1 and models1["base"]["mean"]["value"] == models0["base"]["mean"]["value"]

    # Merged adapters: the base model's answers are the same merged or not, so they come from the cache.
    monkeypatch.undo()
    assert (
        evaluate_paraphrx.main(
            _argv(tmp_path, prepared_dataset_dir, eval_adapters, "--merge_adapters", *_places(tmp_path, "merged"))
        )
        == 0
    )
    merged = json.loads((tmp_path / "eval" / "merged" / "summary.json").read_text(encoding="utf-8"))["run"]
    unmerged = summary["run"]["identities"]
    assert merged["identities"]["base"]["cache_key"] == unmerged["base"]["cache_key"]
    assert merged["identities"]["tiny-bucket1"]["cache_key"] != unmerged["tiny-bucket1"]["cache_key"]
    log = (tmp_path / "logs" / "evaluate_latest.log").read_text(encoding="utf-8")  # the merged run's
    assert "base: generating" not in log and "tiny-bucket1: generating" in log


def test_seeds_and_the_judge_end_to_end(tmp_path, tiny_model_dir, prepared_dataset_dir, judge_server, monkeypatch):
    """Two runs of one recipe with different seeds and a third recipe, judged by a real local server."""
    recipe = {"learning_rate": 0.01, "lora_r": 4, "dataset_train_split": "bucket1_2"}
    adapters = []
    for name, seed, changes in (
        ("tiny-b12-seed1", 1, {}),
        ("tiny-b12-seed2", 2, {}),
        ("tiny-b13", 1, {"dataset_train_split": "bucket1_3"}),
    ):
        adapter = make_adapter(tiny_model_dir, tmp_path / "outputs" / name, seed)
        (adapter / "recipe.yaml").write_text(
            yaml.safe_dump(
                {**recipe, **changes, "seed": seed, "run_name": name, "output_dir": str(adapter), "dtype": "float32"}
            )
        )
        adapters.append(adapter)
    url, model = judge_server
    key = "sk-flag-" + "K3y0fTheJudgeNeverLogged"
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    argv = _argv(
        tmp_path,
        prepared_dataset_dir,
        adapters,
        "--max_paraphrases_per_prompt",
        "4",
        "--judge_model",
        model,
        "--judge_base_url",
        url,
        "--judge_api_key",
        key,
        "--judge_max_tokens",
        "6",
        "--bootstrap_replicates",
        "200",
    )
    assert evaluate_paraphrx.main(argv) == 0
    out = tmp_path / "eval" / "run"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["seed_groups"] == {"tiny-b12": {"tiny-b12-seed1": 1, "tiny-b12-seed2": 2}}
    alpaca = summary["analysis"]["alpaca"]["metrics"]
    assert list(alpaca["rougeL"]["models"]) == ["base", "tiny-b12", "tiny-b13"]
    assert set(alpaca["rougeL"]["models"]["tiny-b12"]["mean"]["per_seed"]) == {"tiny-b12-seed1", "tiny-b12-seed2"}
    # the tiny judge's replies are noise: every answer is counted as unparseable, none is dropped
    counts = summary["judge"]["counts"]
    assert set(counts) == {"base", "tiny-b12-seed1", "tiny-b12-seed2", "tiny-b13"}
    assert all(c["unparseable"] == c["answers"] > 0 and c["scored"] == 0 for m in counts.values() for c in m.values())
    assert list(alpaca) == ["rougeL", "judge_task"] and alpaca["judge_task"]["models"]["base"]["mean"] is None
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(r["judge_status"] == "unparseable" and r["judge_reply"] for r in records)
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| tiny-b12 (2 seeds) |" in text and "answers it could not score" in text
    assert summary["run"]["judge"]["judge"] == model and summary["run"]["judge"]["base_url"] == url
    logs = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "logs").glob("*.log"))
    for written in (logs, text, json.dumps(summary)):
        assert key not in written

    # Re-scoring keeps the judge's results without asking it again (it is no longer given)
    assert evaluate_paraphrx.main(_rescore_argv(tmp_path)) == 0
    again = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert again["judge"]["counts"] == counts and again["seed_groups"] == summary["seed_groups"]


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    not_an_adapter = tmp_path / "outputs" / "bucket1"
    not_an_adapter.mkdir(parents=True)
    result = subprocess.run(
        [
            sys.executable,
            "evaluate_paraphrx.py",
            "--adapters",
            str(not_an_adapter),
            "--log_dir",
            str(tmp_path / "l"),
            "--output_dir",
            str(tmp_path / "eval"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"{not_an_adapter}: no adapter_config.json" in errors[0]
    assert not (tmp_path / "eval").exists()  # nothing half-written


def _run_script(*args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "evaluate_paraphrx.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_broken_config_and_missing_base_folder_are_one_line(tmp_path):
    """The real process: a broken --config YAML and a base model folder that is not there."""
    (tmp_path / "eval.yaml").write_text("batch_size: [4\nmax_new_tokens: 8\n", encoding="utf-8")
    result = _run_script("--config", "eval.yaml", "--log_dir", "l", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: eval.yaml (line 2): invalid YAML")

    result = _run_script("--model_name_or_path", "./models/gone", "--log_dir", "l", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith("--model_name_or_path ./models/gone: no such folder")
    assert not (tmp_path / "outputs").exists()


def test_missing_base_folder_named_by_an_adapter(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    adapter = tmp_path / "outputs" / "bucket1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    assert evaluate_paraphrx.main(["--log_dir", "l"]) == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"outputs/bucket1/adapter_config.json: base_model_name_or_path {tmp_path / 'gone'}: no such folder"
    )


def test_corrupt_summary_json_is_one_line(tmp_path, capfd):
    out = tmp_path / "eval" / "run"
    out.mkdir(parents=True)
    (out / "summary.json").write_text('{"run": {"split": "te', encoding="utf-8")  # a torn write
    (out / "generations.jsonl").write_text("", encoding="utf-8")
    argv = [
        "--output_dir",
        str(tmp_path / "eval"),
        "--output_name",
        "run",
        "--recompute_metrics_only",
        "--log_dir",
        str(tmp_path / "logs"),
    ]
    assert evaluate_paraphrx.main(argv) == 2
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and f"{out / 'summary.json'}: not valid JSON" in errors[0] and "Traceback" not in err
    assert (out / "summary.json").read_text(encoding="utf-8") == '{"run": {"split": "te'  # left as it was
    (out / "summary.json").write_text("[1, 2]", encoding="utf-8")
    assert evaluate_paraphrx.main(argv) == 2
    assert "expected an object with a 'run' object" in capfd.readouterr().err


HUB_FAILURES = {
    "model: no connection": (
        "load_tokenizer",
        OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached "
            "files.\nCheck your internet connection."
        ),
        "base model org/tiny: OSError: We couldn't connect to "
        "'https://huggingface.co' to load the files, and couldn't find them in the cached files. Check your internet "
        "connection.",
    ),
    "model: connection reset": (
        "load_base_model",
        ConnectionError("Connection reset by peer"),
        "base model org/tiny: ConnectionError: Connection reset by peer",
    ),
    "dataset: unreachable": (
        "load_prepared",
        ConnectionError("Couldn't reach 'org/ds' on the Hub\n(offline)"),
        "ConnectionError: Couldn't reach 'org/ds' on the Hub (offline)",
    ),
}


@pytest.mark.parametrize("case", HUB_FAILURES, ids=list(HUB_FAILURES))
def test_hub_errors_are_one_line(tmp_path, prepared_dataset_dir, monkeypatch, capfd, case):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # org/tiny: not cached
    target, error, expected = HUB_FAILURES[case]

    def fail(*args, **kwargs):
        raise error

    tokenizer = types.SimpleNamespace(padding_side="right", pad_token="<pad>")
    monkeypatch.setattr(pipeline, "load_tokenizer", lambda *args: tokenizer)  # never the network
    monkeypatch.setattr(pipeline, target, fail)
    monkeypatch.chdir(tmp_path)  # no outputs/bucket*/ adapters here: the base alone
    argv = [
        "--dataset",
        str(prepared_dataset_dir),
        "--model_name_or_path",
        "org/tiny",
        "--output_dir",
        str(tmp_path / "eval"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--log_dir",
        str(tmp_path / "logs"),
    ]
    assert evaluate_paraphrx.main(argv) == 2
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith(expected) and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


def _generations(out: Path) -> list[tuple[str, str, str]]:
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["model"], r["prompt"], r["generation"]) for r in records]


def _refuse(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} was used")

    return refuse


def test_engine_gives_the_same_generations_as_hf_generate(tmp_path, prepared_dataset_dir, eval_adapters, monkeypatch):
    """float32: the engine (every model in one batch) and HF generate (one model at a time) write the same texts;
    so does the engine on merged adapters."""

    def run(name, *extra):
        argv = _argv(
            tmp_path,
            prepared_dataset_dir,
            eval_adapters,
            "--max_new_tokens",
            "40",
            "--output_name",
            name,
            "--cache_dir",
            str(tmp_path / "cache" / name),
            *extra,
        )
        assert evaluate_paraphrx.main(argv) == 0
        return _generations(tmp_path / "eval" / name)

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "generate_batched", _refuse("HF generate"))
        engine = run("engine")
        merged = run("merged", "--merge_adapters")
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "GemmaDecodeEngine", _refuse("the engine"))
        hf = run("hf", "--generation_engine", "hf")
    assert engine == hf and merged == hf
    assert len({g for _, _, g in engine}) > len(engine) // 2  # real, mostly distinct answers
    summary = json.loads((tmp_path / "eval" / "hf" / "summary.json").read_text(encoding="utf-8"))
    assert summary["run"]["generation_engine"] == "hf"


def test_the_engine_compiles_into_the_user_compile_cache(tmp_path, prepared_dataset_dir, eval_adapters, monkeypatch):
    """The engine's compiled kernels go where training's go (and a later evaluation finds them); the process's own
    settings are back afterwards."""
    real, seen = pipeline.generate_texts, []

    def generate_texts(*args, **kwargs):
        seen.append((os.environ.get("TORCHINDUCTOR_CACHE_DIR"), os.environ.get("TRITON_CACHE_DIR")))
        return real(*args, **kwargs)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setattr(pipeline, "generate_texts", generate_texts)
    argv = _argv(tmp_path, prepared_dataset_dir, eval_adapters, "--max_new_tokens", "4")
    assert evaluate_paraphrx.main(argv) == 0
    root = tmp_path / "xdg" / "paraphrx" / "torch_compile"
    assert seen == [(str(root), str(root / "triton"))]
    assert "TRITON_CACHE_DIR" not in os.environ


def test_an_interrupted_engine_run_keeps_the_answers_that_finished(
    tmp_path, prepared_dataset_dir, eval_adapters, monkeypatch
):
    from paraphrx.eval.cache import GenerationCache

    argv = _argv(tmp_path, prepared_dataset_dir, eval_adapters, "--max_new_tokens", "12", "--engine_slots", "3")
    real_add, calls = GenerationCache.add, []

    def add_then_die(self, prompts, texts):
        real_add(self, prompts, texts)
        calls.append(len(prompts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-run, after three groups of answers reached their caches

    with monkeypatch.context() as patch:
        patch.setattr(GenerationCache, "add", add_then_die)
        assert evaluate_paraphrx.main(argv) == 130  # Ctrl-C: the shared error path's exit code
    kept = sum(len(f.read_text().splitlines()) for f in (tmp_path / "cache").glob("*.jsonl"))
    assert kept == sum(calls) > 0

    generated = []
    real_generate = pipeline.generate_texts

    def counting(engine, tokenizer, jobs, *args, **kwargs):
        generated.append(sum(len(p) for p in jobs.values()))
        return real_generate(engine, tokenizer, jobs, *args, **kwargs)

    monkeypatch.setattr(pipeline, "generate_texts", counting)
    assert evaluate_paraphrx.main(argv) == 0
    resumed = _generations(tmp_path / "eval" / "run")
    assert generated == [len(resumed) - kept]  # only what the interrupted run had not finished
    fresh = _argv(
        tmp_path,
        prepared_dataset_dir,
        eval_adapters,
        "--max_new_tokens",
        "12",
        "--output_name",
        "fresh",
        "--cache_dir",
        str(tmp_path / "fresh-cache"),
    )
    assert evaluate_paraphrx.main(fresh) == 0
    assert resumed == _generations(tmp_path / "eval" / "fresh")


def test_adapters_the_engine_does_not_cover_fall_back_or_fail_in_one_line(
    tmp_path, prepared_dataset_dir, tiny_model_dir, capfd
):
    dora = make_adapter(tiny_model_dir, tmp_path / "outputs" / "dora", 3, use_dora=True)
    argv = _argv(tmp_path, prepared_dataset_dir, [dora], "--max_prompts", "1", "--max_paraphrases_per_prompt", "2")
    assert evaluate_paraphrx.main(argv) == 0
    err = capfd.readouterr().err
    assert "generating with HF generate, one model at a time" in err and "use_dora" in err
    assert (
        evaluate_paraphrx.main(
            argv + ["--generation_engine", "engine", "--output_name", "forced", "--cache_dir", str(tmp_path / "cache2")]
        )
        == 2
    )
    errors = [line for line in capfd.readouterr().err.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and "--generation_engine engine:" in errors[0] and "'use_dora' = True" in errors[0]
    assert not (tmp_path / "eval" / "forced").exists()


def test_an_adapters_hostile_recipe_yaml_is_one_line(eval_adapters):
    from tests.paraphrx.test_recipe_cli import ALIAS_BOMB

    adapters = eval_adapters

    recipe = adapters[0] / "recipe.yaml"
    recipe.write_text(ALIAS_BOMB)
    try:
        with pytest.raises(EvalError) as err:
            pipeline.resolve_model_config(EvalModelConfig(), {a.name: a for a in adapters}, use_recipe=True)
        assert str(err.value) == f"{recipe} (line 2): invalid YAML: aliases (*name) are not allowed here"
    finally:
        recipe.unlink()


def test_a_prompt_over_the_token_limit_is_refused_before_generating(tmp_path, tiny_model_dir, capfd):
    """A 100k-character paraphrase used to make generation allocate ~10 GB; now one line names its row."""
    row = prepared_row(prompt="Name a colour.", reference="Blue")
    huge = {**row, "prompt": "colour " * 15_000, "prompt_count": 2, "instruct_type": "very_long"}
    folder = write_prepared(tmp_path / "long", [row, huge])
    argv = [
        "--dataset",
        str(folder),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--dtype",
        "float32",
        "--output_dir",
        str(tmp_path / "eval"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--log_dir",
        str(tmp_path),
    ]
    assert evaluate_paraphrx.main(argv) == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and re.search(
        f"{folder} split 'test': alpaca prompt_count 2 \\(very_long\\): field 'prompt': [0-9,]+ tokens, "
        "more than --max_prompt_tokens 2,048$",
        errors[0],
    ), errors
    assert not (tmp_path / "eval").exists() and not (tmp_path / "cache").exists()


def test_an_adapter_or_dataset_folder_that_is_not_there_is_named_as_such(tmp_path, eval_adapters, capfd):
    assert evaluate_paraphrx.main(["--adapters", str(tmp_path / "nope"), *_places(tmp_path)]) == 2
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "| ERROR" in line]
    assert line.endswith(f"--adapters {tmp_path / 'nope'}: no such folder")
    argv = ["--dataset", str(tmp_path / "data" / "nope"), "--adapters", str(eval_adapters[0]), *_places(tmp_path)]
    assert evaluate_paraphrx.main(argv) == 2
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "| ERROR" in line]
    assert line.endswith(f"--dataset {tmp_path / 'data' / 'nope'}: no such folder; build it with `make prep`")


def test_flag_mistakes_are_one_line_exit_2_and_nothing_is_written(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(REPO)  # README.md is a file here
    for argv, expected in (
        (
            ["--output_dir", "README.md/sub"],
            "error: command line: --output_dir README.md/sub: README.md is not a folder",
        ),
        (
            ["--recompute_metrics_only", "--adapters", "outputs/x", "--max_new_tokens", "8"],
            "error: command line: recompute_metrics_only re-scores the stored generations and ignores --adapters, "
            "--max_new_tokens: drop them (or run without --recompute_metrics_only to generate anew)",
        ),
        (["--lora_r", "8"], "error: command line: unknown option '--lora_r'"),
    ):
        with pytest.raises(SystemExit) as done:
            evaluate_paraphrx.main([*argv, "--log_dir", str(tmp_path / "logs")])
        assert done.value.code == 2 and capfd.readouterr().err.strip() == expected
    assert not (tmp_path / "logs").exists()


def test_ctrl_c_keeps_the_answers_and_says_so(tmp_path, prepared_dataset_dir, eval_adapters):
    argv = _argv(tmp_path, prepared_dataset_dir, eval_adapters[:1], "--batch_size", "2")
    proc = run_python(
        [REPO / "evaluate_paraphrx.py", *argv],
        tmp_path,
        """
        import os, signal
        from paraphrx.eval.cache import GenerationCache
        add = GenerationCache.add
        def add_then_ctrl_c(self, prompts, answers):
            add(self, prompts, answers)
            open("added.txt", "w").write(str(len(prompts)))
            os.kill(os.getpid(), signal.SIGINT)
        GenerationCache.add = add_then_ctrl_c
    """,
    )
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "| ERROR" in line]
    assert line.endswith(
        f"| interrupted: the answers generated so far are kept in {tmp_path / 'cache'}; rerun the same command to go on"
    )
    (kept,) = (tmp_path / "cache").glob("*.jsonl")
    added = int((tmp_path / "added.txt").read_text())  # the answers that reached the cache before Ctrl-C
    assert len(kept.read_text(encoding="utf-8").splitlines()) == added > 0
