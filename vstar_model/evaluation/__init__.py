"""Evaluation (paper §4.1, A.1): inter-frame similarity and its interval distributions
(:mod:`.similarity`), DreamSim's weight cache (:mod:`.dreamsim_weights`) and plots (:mod:`.plots`)."""
