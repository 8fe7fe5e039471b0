"""Generation cache: keys follow model identity and settings; a torn line costs only itself."""

import json

from paraphrx.eval.cache import GenerationCache, adapter_identity, base_identity, cache_key


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
    assert cache_key({"adapter": a, "settings": settings}) != cache_key({"adapter": a, "settings": {"max_new_tokens": 9}})
    assert cache_key({"adapter": a, "settings": settings}) == cache_key({"settings": settings, "adapter": a})


def test_base_identity_hashes_a_local_folders_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w1")
    first = base_identity(str(tmp_path), None)
    (tmp_path / "model.safetensors").write_bytes(b"w2")
    assert base_identity(str(tmp_path), None) != first
    hub = base_identity("google/gemma-2-2b-it", "main")  # not in the local HF cache here: the revision stands in
    assert hub == {"base": "google/gemma-2-2b-it", "commit": "main"}


def test_round_trip_missing_and_torn_line(tmp_path):
    identity = {"base": "m", "settings": {"max_new_tokens": 4}}
    cache = GenerationCache(tmp_path, identity)
    assert cache.missing(["p1", "p2", "p1"]) == ["p1", "p2"]
    cache.add(["p1"], ["answer one"])
    assert json.loads((tmp_path / f"{cache.key}.json").read_text()) == identity
    with cache.path.open("a") as handle:  # an interrupted append
        handle.write('{"prompt_sha256": "abc", "genera')
    reread = GenerationCache(tmp_path, identity)
    assert reread.get("p1") == "answer one" and reread.get("p2") is None and len(reread) == 1
    reread.add(["p2"], ["answer two"])
    again = GenerationCache(tmp_path, identity)
    assert again.get("p2") == "answer two" and again.missing(["p1", "p2"]) == []
    assert GenerationCache(tmp_path, {**identity, "settings": {"max_new_tokens": 5}}).get("p1") is None
