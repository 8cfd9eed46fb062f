import pytest
import torch

from vstar_model.backbones import BackboneNotFound, get_preset, load_backbone, tiny_model_path


def test_tiny_preset_loads_with_from_pretrained_offline(tiny_model_dir):
    model = load_backbone("tiny", path=tiny_model_dir)
    assert type(model.unet).__name__ == "UNet3DConditionModel"
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.location == str(tiny_model_dir)
    assert model.vae_scale_factor == 8


def test_builtin_tiny_model_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSTAR_CACHE_DIR", str(tmp_path))
    path = tiny_model_path()
    stamp = (path / "unet" / "config.json").stat().st_mtime_ns
    assert tiny_model_path() == path
    assert (path / "unet" / "config.json").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("models/*.tmp*"))


def test_unknown_preset_names_the_value():
    with pytest.raises(ValueError, match="'videocrafter9'"):
        get_preset("videocrafter9")


@pytest.mark.parametrize(("preset", "repos"), [
    ("modelscope", ["ali-vilab/text-to-video-ms-1.7b"]),
    ("videocrafter2", ["cerspense/zeroscope_v2_576w", "adamdad/videocrafterv2_diffusers"]),  # UNet apart
])
def test_missing_hub_weights_give_a_clear_error_naming_preset_and_locations(tmp_path, monkeypatch, preset, repos):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneNotFound) as info:
        load_backbone(preset)
    message = str(info.value)
    assert f"{preset!r}" in message
    for repo in repos:
        assert f"huggingface-cli download {repo}" in message


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(BackboneNotFound, match=str(tmp_path / "nowhere")):
        load_backbone("tiny", path=tmp_path / "nowhere")


def test_bad_dtype_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="'float13'"):
        load_backbone("tiny", path=tiny_model_dir, dtype="float13")


def test_animatediff_family_loads_motion_model(tiny_animatediff_dir):
    model = load_backbone("animatediff", path=tiny_animatediff_dir)
    assert type(model.unet).__name__ == "UNetMotionModel"
