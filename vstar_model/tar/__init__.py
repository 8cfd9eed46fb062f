"""Temporal Attention Regularization (paper §3.4): ΔA bands (:mod:`.bands`), the regularised
attention as pure functions (:mod:`.attention`), and its attention processors for video UNets
(:mod:`.unet`, ``apply_tar``)."""
