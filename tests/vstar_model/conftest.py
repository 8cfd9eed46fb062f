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
