"""The transformer model family: plain PyTorch, no training, data, devices or parallelism.

Import from the submodules (`lmforge.model.transformer`, `lmforge.model.config`); this package
module stays import-light so the CLI can start without torch.
"""
