"""Temporal attention analysis (paper §3.3): capture of attention maps, real-video maps and band
scores (:mod:`.temporal_attention`), and their plots (:mod:`.plots`)."""
