import pytest

from vstar_model.backbones.tiny import TINY_CROSS_ATTENTION_DIM


@pytest.fixture(scope="session")
def image_unet():
    """A tiny UNet2DConditionModel: an image UNet, with no temporal attention to regularise or capture."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 8),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=4,
    )


# A Wan 2.1 transformer small enough for unit tests (two heads of 12 channels: RoPE splits them
# 4/4/4 over frames, height and width); 3 blocks.
TINY_WAN_TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=16,
    ffn_dim=32,
    num_layers=3,
    rope_max_seq_len=64,
)


@pytest.fixture
def wan_transformer():
    """A fresh tiny random ``WanTransformer3DModel`` (diffusers' stock processors), in eval mode."""
    import torch
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return WanTransformer3DModel(**TINY_WAN_TRANSFORMER_CONFIG).eval()
