"""Every private name paraphrx uses is looked up in library_internals, and only there; a missing one is reported."""

import ast
from pathlib import Path

import trl.kernels.chunked_logprob
from torch import nn
from trl import SFTTrainer

import paraphrx
from paraphrx import library_internals

LIBRARIES = ("torch", "trl", "transformers", "peft", "accelerate", "bitsandbytes", "datasets")


def test_the_tested_versions_have_every_name():
    assert library_internals.MISSING == []
    assert library_internals.forward_kernel is trl.kernels.chunked_logprob._forward_kernel


def test_a_renamed_kernel_or_trainer_attribute_is_reported(monkeypatch):
    monkeypatch.delattr(trl.kernels.chunked_logprob, "_forward_kernel")
    assert library_internals.find_missing() == ["trl.kernels.chunked_logprob._forward_kernel"]

    def init_without_tp_size(self, *args, **kwargs):
        self._metrics, self._total_train_tokens = {}, 0

    monkeypatch.setattr(SFTTrainer, "__init__", init_without_tp_size)
    assert "trl.SFTTrainer._tp_size" in library_internals.find_missing()


def _private_uses(path: Path) -> list[str]:
    """Underscore names of the libraries that a module imports or reaches as a module attribute (torch._dynamo)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            names = [node.module, *(alias.name for alias in node.names)]
            found += [name for name in names if any(part.startswith("_") for part in name.split("."))]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in LIBRARIES and "._" in a.name]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in LIBRARIES:
                found.append(f"{root.id}...{node.attr}")
    return found


def test_no_other_module_reaches_a_private_name():
    package = Path(paraphrx.__file__).parent
    uses = {str(path.relative_to(package)): _private_uses(path) for path in sorted(package.rglob("*.py"))}
    assert uses.pop("library_internals.py")  # the control: it does, so the scan can find them
    assert {module: names for module, names in uses.items() if names} == {}


def test_compiled_and_the_recompile_limit_are_undone():
    import torch
    import torch._dynamo

    layer, limit = nn.Linear(2, 2), torch._dynamo.config.recompile_limit
    with library_internals.compiled(layer), library_internals.recompile_limit_at_least(limit + 8):
        assert "_compiled_call_impl" in vars(layer) and torch._dynamo.config.recompile_limit == limit + 8
    assert "_compiled_call_impl" not in vars(layer) and torch._dynamo.config.recompile_limit == limit
    assert torch.equal(layer(torch.ones(1, 2)), layer.forward(torch.ones(1, 2)))  # eager again


def test_the_preparation_hook_overrides_sfttrainers_preparation_only_where_its_signature_is_known(monkeypatch):
    assert "_prepare_dataset" in vars(library_internals.PreparationHook)  # TRL 1.16: token_reuse.py is in the path

    def other_signature(self, dataset, processing_class, args, packing, formatting_func, dataset_name, extra):
        raise AssertionError("not called")

    monkeypatch.setattr(SFTTrainer, "_prepare_dataset", other_signature)
    assert not library_internals._prepare_dataset_as_expected()
