"""LLaVA inference with training-free visual token sparsification (SparseVLM and baselines)."""

__version__ = "0.1.0"
