"""A recording to vectors: the models (:mod:`.models`), the clip pipeline (:mod:`.pipeline`),
the fast paths of the WavLM forward pass (:mod:`.kernels`, :mod:`.intgemm`), thread pools
(:mod:`.threads`) and the cache of weight fingerprints (:mod:`.idcache`).

Importing this package loads no model and no torch; :func:`~.models.load_embedder` does.
"""
