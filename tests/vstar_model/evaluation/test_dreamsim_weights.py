"""DreamSim cache checks (the clear missing-files error) and the random-weight cache builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vstar_model.evaluation.dreamsim_weights import (
    CACHE_DIR_ENV,
    DREAMSIM_TYPES,
    RANDOM_WEIGHTS_MARKER,
    DreamSimWeightsMissing,
    check_dreamsim_cache,
    default_cache_dir,
    missing_files,
    save_random_dreamsim_cache,
    uses_random_weights,
)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "weights"))
    assert default_cache_dir() == tmp_path / "weights"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "vstar" / "dreamsim"


@pytest.mark.parametrize("dreamsim_type", DREAMSIM_TYPES)
def test_empty_cache_lists_every_needed_file(tmp_path, dreamsim_type):
    missing = missing_files(tmp_path, dreamsim_type)
    assert any(name.endswith("/adapter_config.json") for name in missing)
    assert any("adapter_model.safetensors" in name for name in missing)
    assert any(name.endswith((".pth", ".pth.tar")) and "/" not in name for name in missing)
    needs_torch_hub = "dino" in dreamsim_type or dreamsim_type == "ensemble"
    assert any(name.endswith("/hubconf.py") for name in missing) == needs_torch_hub


def test_missing_files_error_names_files_folder_and_remedy(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DreamSimWeightsMissing) as error:
        check_dreamsim_cache(cache, "ensemble")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    for name in missing_files(cache, "ensemble"):
        assert name in message
    assert str(cache.resolve()) in message
    assert "dreamsim(pretrained=True" in message and "dreamsim_type='ensemble'" in message
    assert CACHE_DIR_ENV in message and "torch.hub" in message


def test_only_the_files_still_missing_are_listed(tmp_path):
    (tmp_path / "open_clip_vitb32_pretrain.pth.tar").write_bytes(b"")
    adapter = tmp_path / "open_clip_vitb32_single_lora"
    adapter.mkdir()
    (adapter / "adapter_model.bin").write_bytes(b"")
    assert missing_files(tmp_path, "open_clip_vitb32") == ["open_clip_vitb32_single_lora/adapter_config.json"]
    (adapter / "adapter_config.json").write_text("{}")
    check_dreamsim_cache(tmp_path, "open_clip_vitb32")  # complete: no error
    assert not uses_random_weights(tmp_path)  # only save_random_dreamsim_cache marks a cache random


def test_unknown_types_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="'vit_huge'"):
        missing_files(tmp_path, "vit_huge")
    with pytest.raises(ValueError, match="no torch.hub"):
        save_random_dreamsim_cache(tmp_path, "dino_vitb16")


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # dreamsim's double PEFT wrap
def test_random_cache_is_complete_marked_and_loads_in_dreamsim_offline(random_dreamsim_cache):
    from dreamsim import dreamsim

    assert missing_files(random_dreamsim_cache, "open_clip_vitb32") == []
    assert (Path(random_dreamsim_cache) / RANDOM_WEIGHTS_MARKER).is_file()
    assert uses_random_weights(random_dreamsim_cache)

    model, _ = dreamsim(
        pretrained=True, device="cpu", cache_dir=str(random_dreamsim_cache), dreamsim_type="open_clip_vitb32"
    )
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "the adapter must change the model, not be a no-op"
    with torch.inference_mode():
        distance = model(torch.rand(1, 3, 224, 224), torch.rand(1, 3, 224, 224))
    assert distance.shape == (1,) and torch.isfinite(distance).all()
