"""hwnas supernet: the shared search space, the block builder and the OFA supernet.

``import supernet`` and ``import supernet.space`` stay light (no torch)."""
