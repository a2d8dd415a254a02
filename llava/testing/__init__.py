"""Offline fixtures: tiny random checkpoints in the real on-disk formats (see `checkpoints`)."""

from llava.testing.checkpoints import convert_to_llava_hf, write_tiny_clip, write_tiny_llava, write_tiny_pair

__all__ = ["convert_to_llava_hf", "write_tiny_clip", "write_tiny_llava", "write_tiny_pair"]
from llava.testing.qwen_checkpoints import build_qwen_tokenizer, save_qwen_tokenizer, write_tiny_qwen_vl

__all__ += ["build_qwen_tokenizer", "save_qwen_tokenizer", "write_tiny_qwen_vl"]
