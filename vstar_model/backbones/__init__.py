"""Text-to-video backbones: presets (:mod:`.presets`), loading from a folder or the hub cache
(:mod:`.loading`), tiny random models in diffusers' layout (:mod:`.tiny`) and VideoCrafter2's UNet
with its rescaled schedule (:mod:`.videocrafter`)."""
