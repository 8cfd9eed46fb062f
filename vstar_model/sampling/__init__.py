"""Single-pass long-video sampling loops: DDIM with classifier-free guidance, VSP and TAR for video
UNets (:mod:`.unet`)."""
