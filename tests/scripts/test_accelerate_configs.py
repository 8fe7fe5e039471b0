"""The shipped accelerate configs load with accelerate's own parser and name the fields the README promises."""

import pytest
from accelerate.commands.config.config_args import ClusterConfig

from tests.conftest import REPO

CONFIGS = REPO / "accelerate_configs"


@pytest.mark.parametrize(
    "name, distributed_type",
    [("single_gpu", "NO"), ("multi_gpu", "MULTI_GPU"), ("fsdp_qlora", "FSDP"), ("deepspeed_zero3", "DEEPSPEED")],
)
def test_config_loads_with_bf16(name, distributed_type):
    config = ClusterConfig.from_yaml_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == distributed_type
    assert str(config.mixed_precision) == "bf16" and config.use_cpu is False
    assert (config.num_processes == 1) == (name == "single_gpu")


def test_fsdp_shards_the_4bit_base_by_decoder_layer():
    fsdp = ClusterConfig.from_yaml_file(str(CONFIGS / "fsdp_qlora.yaml")).fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_use_orig_params"] is False
    assert "bnb_4bit_quant_storage bfloat16" in (CONFIGS / "fsdp_qlora.yaml").read_text()


def test_deepspeed_is_zero3():
    ds = ClusterConfig.from_yaml_file(str(CONFIGS / "deepspeed_zero3.yaml")).deepspeed_config
    assert ds["zero_stage"] == 3 and ds["zero3_init_flag"] is True


def launch_env(name: str) -> dict:
    """The environment `accelerate launch --config_file accelerate_configs/<name>.yaml` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "train_sft.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_multi_gpu_launches_torchrun_ddp_in_bf16():
    env = launch_env("multi_gpu")
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and "ACCELERATE_USE_FSDP" not in env


def test_fsdp_launch_sets_the_qlora_plugin_fields():
    """What accelerate's FSDP plugin reads from the launch environment (it needs a GPU to be built) matches PEFT's
    fsdp_config_qlora.yaml: flat parameters (use_orig_params false), the base loaded on rank 0 only and broadcast
    (cpu_ram_efficient_loading needs sync_module_states), one FSDP unit per decoder layer, no CPU offload."""
    env = launch_env("fsdp_qlora")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "1"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD" and env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_OFFLOAD_PARAMS"] == "false"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
    # checkpoints stay sharded; ParaphrxSFTTrainer.save_model gathers the final adapter (tests/scripts/test_train_sft_multi_process.py)
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


def test_recipe_override_stores_4bit_weights_in_bf16():
    """FSDP (and ZeRO-3) can only flatten the packed NF4 weights together with the bf16 ones if bitsandbytes stores
    them in the model's dtype; TRL's ModelConfig carries `bnb_4bit_quant_storage`, so it is a recipe override."""
    import torch
    from trl import get_quantization_config

    from paraphrx.recipe_cli import parse_recipe

    recipe = str(CONFIGS.parent / "recipes" / "bucket1-4.yaml")
    on_cpu = ["--bf16", "false", "--use_cpu", "true"]  # parsing checks bf16 support; the model fields are the point
    _, _, model_args = parse_recipe([recipe, "--bnb_4bit_quant_storage", "bfloat16", *on_cpu])
    quant = get_quantization_config(model_args)
    assert quant.bnb_4bit_quant_storage == torch.bfloat16 == getattr(torch, model_args.dtype)
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16 and quant.bnb_4bit_quant_type == "nf4"
    assert (
        get_quantization_config(parse_recipe([recipe, *on_cpu])[2]).bnb_4bit_quant_storage == torch.uint8
    )  # the default


def test_fsdp_launch_without_bf16_4bit_storage_is_a_one_line_recipe_error(monkeypatch):
    """Caught when the recipe is parsed, before any weights load (FSDP itself fails only while wrapping the model).
    DeepSpeed launches get the same check; they cannot be parsed here without deepspeed installed."""
    from paraphrx.recipe_cli import RecipeError, parse_recipe

    for key, value in launch_env("fsdp_qlora").items():  # the environment accelerate launch gives each process
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    recipe = str(CONFIGS.parent / "recipes" / "bucket1-4.yaml")
    on_cpu = ["--bf16", "false", "--use_cpu", "true"]
    with pytest.raises(RecipeError) as err:
        parse_recipe([recipe, *on_cpu])
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{recipe}: bnb_4bit_quant_storage:")
    assert "--bnb_4bit_quant_storage bfloat16" in message and "uint8" in message
    assert (
        parse_recipe([recipe, "--bnb_4bit_quant_storage", "bfloat16", *on_cpu])[2].bnb_4bit_quant_storage == "bfloat16"
    )
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert parse_recipe([recipe, *on_cpu])[2].bnb_4bit_quant_storage is None  # a plain launch keeps the default
