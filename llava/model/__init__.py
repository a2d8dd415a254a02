from llava.model.builder import load_pretrained_model
from llava.model.config import LlavaConfig
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

__all__ = ["LlavaConfig", "LlavaLlamaForCausalLM", "load_pretrained_model"]
