"""Video I/O: reading clips and frame folders (:mod:`.reader`), writing deterministic mp4s and
frame strips (:mod:`.writer`)."""
