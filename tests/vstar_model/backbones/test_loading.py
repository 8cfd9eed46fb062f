import pytest
import torch

from vstar_model.backbones.loading import BackboneNotFound, load_backbone, builtin_model_path

from vstar_model.backbones.presets import get_preset


def test_tiny_preset_loads_with_from_pretrained_offline(tiny_model_dir):
    model = load_backbone("tiny", path=tiny_model_dir)
    assert type(model.unet).__name__ == "UNet3DConditionModel"
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.location == str(tiny_model_dir)
    assert model.vae_scale_factor == 8


def test_builtin_tiny_model_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSTAR_CACHE_DIR", str(tmp_path))
    path = builtin_model_path()
    stamp = (path / "unet" / "config.json").stat().st_mtime_ns
    assert builtin_model_path() == path
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
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import
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


def test_download_takes_safetensors_where_a_folder_has_them_else_bin():
    from vstar_model.backbones.loading import files_to_download

    zeroscope_like = [
        "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "text_encoder/config.json", "text_encoder/pytorch_model.bin", "unet/config.json",
        "unet/diffusion_pytorch_model.bin", "vae/config.json", "vae/diffusion_pytorch_model.bin",
        "zs2_576w/text2video_pytorch_model.pth", "README.md",
    ]
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    not_for_diffusers = {"zs2_576w/text2video_pytorch_model.pth", "README.md"}
    assert files_to_download(zeroscope_like, components) == sorted(set(zeroscope_like) - not_for_diffusers)
    assert "unet/diffusion_pytorch_model.bin" not in files_to_download(zeroscope_like, ("vae", "text_encoder"))
    sd15_like = ["v1-5-pruned.safetensors", "safety_checker/model.safetensors",
                 "unet/diffusion_pytorch_model.safetensors"]
    assert files_to_download(sd15_like, components) == ["unet/diffusion_pytorch_model.safetensors"]
    both = ["unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.bin"]
    assert files_to_download(both, ("unet", "vae")) == ["unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                       "vae/diffusion_pytorch_model.fp16.bin"]  # a variant only when alone
    unet_at_root = ["config.json", "diffusion_pytorch_model.safetensors", ".gitattributes", "README.md"]
    assert files_to_download(unet_at_root) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_online_download_asks_for_exactly_those_files(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    listings = {
        "cerspense/zeroscope_v2_576w": ["model_index.json", "unet/diffusion_pytorch_model.bin",
                                        "vae/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin"],
        "adamdad/videocrafterv2_diffusers": ["config.json", "diffusion_pytorch_model.safetensors", "README.md"],
    }
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, revision=None: listings[repo])
    asked = {}

    def snapshot_download(repo, revision=None, local_files_only=False, allow_patterns=None):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        asked[repo] = allow_patterns
        return str(tmp_path / repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    from vstar_model.backbones.loading import resolve_location

    locations = resolve_location(get_preset("videocrafter2"))
    assert locations.unet == tmp_path / "adamdad/videocrafterv2_diffusers"
    assert asked["adamdad/videocrafterv2_diffusers"] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert asked["cerspense/zeroscope_v2_576w"] == [  # Zeroscope's own UNet is not fetched
        "model_index.json", "text_encoder/pytorch_model.bin", "vae/diffusion_pytorch_model.bin"]
