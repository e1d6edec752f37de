"""The engine: loads and owns the model, generates tokens and decodes them to audio; no threads, no sockets.

``models`` loads checkpoints and builds the random ones, ``decoding`` is the one token loop,
``fast_decoder`` and ``kernels`` the decoder step, ``streaming`` the chunked codec, ``jam`` the
jam's token timeline; :class:`Engine` (in ``engine``) ties them together.
"""

from bridge.engine.engine import Engine, GenerationSpec

__all__ = ["Engine", "GenerationSpec"]
