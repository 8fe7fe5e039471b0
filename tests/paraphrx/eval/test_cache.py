"""Generation cache: keys follow model identity and settings; a torn line costs only itself."""

import json

import pytest

from paraphrx.eval import pipeline
from paraphrx.eval.cache import GenerationCache, adapter_identity, base_identity, cache_key, loaded_base_identity
from paraphrx.eval.config import EvalArguments, EvalModelConfig

HUB_ID = "google/gemma-2-2b-it"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF cache of the test's own, whatever the user's cache holds (gemma itself, say)."""
    import huggingface_hub.constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))  # read once, at import
    return home / "hub"


def fake_download(hub_cache, repo_id, commit, revision="main"):
    """What `from_pretrained` leaves in the HF cache: the revision -> commit ref and the snapshot's files."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")


def _adapter(tmp_path, name, weights: bytes):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def test_key_changes_with_adapter_weights_and_settings(tmp_path):
    a = adapter_identity(_adapter(tmp_path, "x", b"\x00\x01"))
    b = adapter_identity(_adapter(tmp_path, "y", b"\x00\x02"))
    settings = {"max_new_tokens": 8}
    assert cache_key({"adapter": a, "settings": settings}) != cache_key({"adapter": b, "settings": settings})
    assert cache_key({"adapter": a, "settings": settings}) != cache_key(
        {"adapter": a, "settings": {"max_new_tokens": 9}}
    )
    assert cache_key({"adapter": a, "settings": settings}) == cache_key({"settings": settings, "adapter": a})


def test_base_identity_hashes_a_local_folders_weights(tmp_path, hf_cache):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"w1")
    first = base_identity(str(model_dir), None)
    assert loaded_base_identity(str(model_dir), None) == first  # a local folder: the same before and after loading
    (model_dir / "model.safetensors").write_bytes(b"w2")
    assert base_identity(str(model_dir), None) != first


def test_hub_identity_is_the_commit_the_hf_cache_resolves(hf_cache):
    assert base_identity(HUB_ID, "main") == {"base": HUB_ID, "commit": None}  # never downloaded: unknown yet
    assert loaded_base_identity(HUB_ID, "main") == {"base": HUB_ID, "commit": "main"}  # still unknown after a load
    fake_download(hf_cache, HUB_ID, COMMIT)
    assert base_identity(HUB_ID, "main") == {"base": HUB_ID, "commit": COMMIT}
    assert base_identity(HUB_ID, None) == loaded_base_identity(HUB_ID, "main") == {"base": HUB_ID, "commit": COMMIT}
    assert base_identity(HUB_ID, COMMIT)["commit"] == COMMIT


def test_first_and_second_run_of_a_hub_model_share_one_cache_key(tmp_path, hf_cache, monkeypatch):
    """First run: the model is not in the HF cache, so its commit is only known once it is loaded (downloaded).
    The answers must land under that commit's key, the one the second run computes before loading anything."""
    loads = []

    def load_base_model(model_args, trust_remote_code=False):  # a "download": the HF cache now maps main -> COMMIT
        loads.append(model_args.model_name_or_path)
        fake_download(hf_cache, HUB_ID, COMMIT)
        return object()

    def generate_batched(model, tokenizer, prompts, on_batch=None, **kwargs):
        on_batch(prompts, [p.upper() for p in prompts])
        return [p.upper() for p in prompts]

    class Tokenizer:  # what the pipeline asks of one: left padding (for_generation) and prompt lengths
        padding_side, pad_token = "right", "<pad>"

        def __call__(self, texts):
            return {"input_ids": [[1]] * len(texts)}

    monkeypatch.setattr(pipeline, "load_tokenizer", lambda *args: Tokenizer())
    monkeypatch.setattr(pipeline, "load_base_model", load_base_model)
    monkeypatch.setattr(pipeline, "generate_batched", generate_batched)
    model_args = EvalModelConfig(model_name_or_path=HUB_ID, model_revision="main")
    prompts = ["p1", "p2"]

    first, first_ids = pipeline.generate_answers(prompts, {"base": None}, model_args, EvalArguments(), tmp_path / "c")
    assert loads == [HUB_ID] and first == {"base": {"p1": "P1", "p2": "P2"}}
    assert first_ids["base"]["commit"] == COMMIT
    second, second_ids = pipeline.generate_answers(prompts, {"base": None}, model_args, EvalArguments(), tmp_path / "c")
    assert loads == [HUB_ID]  # everything cached under the same key: no model loaded, nothing regenerated
    assert second == first and second_ids["base"]["cache_key"] == first_ids["base"]["cache_key"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        [f"{first_ids['base']['cache_key']}.json", f"{first_ids['base']['cache_key']}.jsonl"]
    )


def test_round_trip_missing_and_torn_line(tmp_path):
    identity = {"base": "m", "settings": {"max_new_tokens": 4}}
    cache = GenerationCache(tmp_path, identity)
    assert cache.missing(["p1", "p2", "p1"]) == ["p1", "p2"]
    cache.add(["p1"], ["answer one"])
    assert json.loads((tmp_path / f"{cache.key}.json").read_text()) == identity
    with cache.path.open("a") as handle:  # an interrupted append
        handle.write('{"prompt_sha256": "abc", "genera')
    reread = GenerationCache(tmp_path, identity)
    assert reread.get("p1") == "answer one" and reread.get("p2") is None and reread.missing(["p1", "p2"]) == ["p2"]
    reread.add(["p2"], ["answer two"])
    again = GenerationCache(tmp_path, identity)
    assert again.get("p2") == "answer two" and again.missing(["p1", "p2"]) == []
    assert GenerationCache(tmp_path, {**identity, "settings": {"max_new_tokens": 5}}).get("p1") is None


@pytest.mark.parametrize(
    "damage",
    [
        "cut inside a multibyte character",
        "not JSON",
        "a JSON list",
        "generation not a string",
        "hash not a hash",
        "lone surrogate",
    ],
)
def test_a_corrupt_line_anywhere_is_skipped_and_answered_again(tmp_path, damage):
    """Any torn or corrupt line costs its own answer only; the cache is never unusable."""
    identity = {"base": "m"}
    cache = GenerationCache(tmp_path, identity)
    cache.add(["p1", "p2", "p3"], ["une réponse très détaillée", "two", "three"])
    lines = cache.path.read_bytes().splitlines(keepends=True)
    sha = json.loads(lines[0])["prompt_sha256"]
    lines[0] = {
        "cut inside a multibyte character": lines[0][: lines[0].index("é".encode()) + 1],  # no newline either
        "not JSON": b"\x00\x01garbage\n",
        "a JSON list": b'["p1", "une"]\n',
        "generation not a string": json.dumps({"prompt_sha256": sha, "generation": 7}).encode() + b"\n",
        "hash not a hash": json.dumps({"prompt_sha256": ["x"], "generation": "x"}).encode() + b"\n",
        "lone surrogate": b'{"prompt_sha256": "' + sha.encode() + b'", "generation": "\xed\xa0\x80"}\n',
    }[damage]
    if damage == "cut inside a multibyte character":  # the kill came while writing the last line
        lines = [*lines[1:], lines[0]]
    cache.path.write_bytes(b"".join(lines))

    reread = GenerationCache(tmp_path, identity)
    assert reread.missing(["p1", "p2", "p3"]) == ["p1"] and reread.get("p2") == "two" and reread.get("p3") == "three"
    reread.add(["p1"], ["regenerated"])
    assert GenerationCache(tmp_path, identity).get("p1") == "regenerated"
