"""The shipped accelerate configs load with accelerate's own parser and name the fields the README promises."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

CONFIGS = Path(__file__).resolve().parent.parent / "accelerate_configs"


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
