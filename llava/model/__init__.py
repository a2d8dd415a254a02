"""The LLaVA model: `load_pretrained_model`, `LlavaLlamaForCausalLM`, `LlavaConfig` (imported lazily, so that
`llava.sparse` and `llava.model` can import each other's modules without a cycle)."""

__all__ = ["LlavaConfig", "LlavaLlamaForCausalLM", "load_pretrained_model"]


def __getattr__(name):
    if name == "load_pretrained_model":
        from llava.model.builder import load_pretrained_model

        return load_pretrained_model
    if name == "LlavaConfig":
        from llava.model.config import LlavaConfig

        return LlavaConfig
    if name == "LlavaLlamaForCausalLM":
        from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

        return LlavaLlamaForCausalLM
    raise AttributeError(name)
