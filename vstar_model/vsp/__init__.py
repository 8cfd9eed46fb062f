"""Video Synopsis Prompting (paper §3.2): the instruction template and answer parsing
(:mod:`.synopsis`), the LLM client (:mod:`.llm`), state embeddings interpolated over frames
(:mod:`.embeddings`), and per-frame text conditioning of video UNets (:mod:`.unet`)."""
