"""The data core: corpora → Megatron indexed datasets → weighted blends → packed training samples.

Modules (one job each): ``readers`` (input files, record validation), ``encode`` (tokenize a batch,
in workers), ``preprocess`` (the pipeline: ``preprocess()``), ``indexed`` (MMIDIDX ``.bin/.idx``
writer and reader, loss-mask twin), ``merge`` and ``inspect`` (dataset tools), ``packing``
(Megatron-style samples with document boundaries), ``blend`` (weights → cached indices,
fingerprint), ``loader`` (train/eval loaders with consumed-samples state; torch only here).
"""
