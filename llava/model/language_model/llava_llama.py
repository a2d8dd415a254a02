"""LlavaLlamaForCausalLM: a Llama decoder (transformers' layers, our loop) with a CLIP tower and projector."""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from llava.model.config import LlavaConfig
from llava.model.language_model.decoder import ATTN_IMPLEMENTATIONS, DecoderCache, DecoderLoop, SequenceState
from llava.model.llava_arch import MultimodalInputs, encode_images, splice_image_features
from llava.model.multimodal_projector.builder import build_vision_projector
from llava.sparse.accounting import SampleAccount, Timer
from llava.sparse.attention_rows import wrapped_name
from llava.sparse.engine import PruningMethod, layouts_from_spans


class LlavaLlamaModel(nn.Module):
    """Holds the modules under the original checkpoint's `model.` prefix: `embed_tokens`, `layers`, `norm`,
    `mm_projector` (and, attached by the loader, `vision_tower`, which 1.5 checkpoints do not contain)."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        text = config.text_config
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size, text.pad_token_id)
        self.layers = nn.ModuleList(LlamaDecoderLayer(text, i) for i in range(text.num_hidden_layers))
        self.norm = LlamaRMSNorm(text.hidden_size, eps=text.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(text)
        self.mm_projector = build_vision_projector(config.mm_projector_type, config.mm_hidden_size, text.hidden_size)
        self.vision_tower = None

    def reset_rotary(self, config: LlavaConfig, device: torch.device | str) -> None:
        """Rebuild the (non-persistent) rotary table, e.g. after the model was created on the meta device."""
        with torch.device(device):
            self.rotary_emb = LlamaRotaryEmbedding(config.text_config)


@dataclasses.dataclass
class PrefillOutput:
    hidden_states: torch.Tensor  # final-norm hidden states [B, L, D]
    inputs: MultimodalInputs
    cache: DecoderCache | None
    accounts: list[SampleAccount]


class LlavaLlamaForCausalLM(nn.Module):
    """LLaVA-1.5 for inference. `forward` gives prefill logits; `generate` decodes with a KV cache."""

    def __init__(self, config: LlavaConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.model = LlavaLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.set_attn_implementation(attn_implementation)
        self.pruning = PruningMethod()
        self.last_accounts: list[SampleAccount] = []  # efficiency accounting of the last generate() call

    # -- LLaVA-compatible accessors ---------------------------------------------------------------------------
    def get_model(self) -> LlavaLlamaModel:
        return self.model

    def get_vision_tower(self):
        return self.model.vision_tower

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def attn_implementation(self) -> str:
        return self._attn_implementation

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """eager, sdpa or flash_attention_2. The Llama layers call the stock kernel through a registered wrapper
        that can also hand attention rows to pruning methods (`llava.sparse.attention_rows`)."""
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
        self._attn_implementation = attn_implementation
        self.config.text_config._attn_implementation = wrapped_name(attn_implementation)

    def set_pruning(self, method: PruningMethod | None) -> None:
        """The visual-token pruning method used by every following prefill (None: no pruning); checked against
        this model now, so that an impossible budget fails before any data is read."""
        method = method or PruningMethod()
        if hasattr(method, "validate") and self.model.vision_tower is not None:
            method.validate(self)
        self.pruning = method

    # -- building blocks ----------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected features of the visual tokens that enter the LLM (after any pre-LLM pruning)."""
        if self.model.vision_tower is None:
            raise RuntimeError("This model has no vision tower loaded; load it with load_pretrained_model()")
        return encode_images(self.model.vision_tower, self.model.mm_projector, images, self.pruning)

    def prepare_inputs(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> MultimodalInputs:
        features = None
        if images is not None:
            if isinstance(images, list):
                images = torch.stack(images) if images[0].dim() == 3 else torch.cat(images)
            features = self.encode_images(images.to(self.device))
        if isinstance(input_ids, torch.Tensor):
            input_ids = input_ids.to(self.device)
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
        else:
            input_ids = [ids.to(self.device) for ids in input_ids]
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        inputs = splice_image_features(
            input_ids, attention_mask, features, self.model.embed_tokens, self.config.tokenizer_model_max_length
        )
        if features is not None:
            tower = self.model.vision_tower
            encoded = tower.num_patches + (tower.select_feature == "cls_patch")
            inputs.num_encoded = [encoded * len(spans) for spans in inputs.image_spans]
        return inputs

    def prefill(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> PrefillOutput:
        inputs = self.prepare_inputs(input_ids, images, attention_mask)
        state = SequenceState(inputs.inputs_embeds, inputs.position_ids, inputs.token_mask, inputs.has_padding)
        layouts = layouts_from_spans(inputs.image_spans, inputs.lengths, inputs.inputs_embeds.shape[1])
        cache = DecoderCache() if use_cache else None
        with Timer(self.device) as timer:  # the method's own set-up (e.g. SparseVLM's raters) counts as prefill
            plan_start = time.perf_counter()
            plan = self.pruning.plan(layouts, self, inputs)
            plan_ms = (time.perf_counter() - plan_start) * 1e3
            hidden = DecoderLoop(self.model, self.attn_implementation).run(state, cache, plan)
        for account in plan.accounts:
            account.prefill_ms = timer.ms
            if self.device.type == "cpu":
                account.method_ms = (account.method_ms or 0.0) + plan_ms
        return PrefillOutput(hidden, inputs, cache, plan.accounts)

    def decode_step(self, token_ids: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Logits [B, V] for one new token per sample, appended to `cache`."""
        embeds = self.model.embed_tokens(token_ids[:, None])
        mask = torch.ones_like(token_ids, dtype=torch.bool)[:, None]
        state = SequenceState(embeds, torch.zeros_like(token_ids)[:, None], mask, False)
        hidden = DecoderLoop(self.model, self.attn_implementation).run(state, cache)
        return self.lm_head(hidden[:, -1]).float()

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes=None,
    ) -> torch.Tensor:
        """Logits [B, L, V] over the spliced, left-padded prefill sequence (no cache)."""
        out = self.prefill(input_ids, images, attention_mask, use_cache=False)
        return self.lm_head(out.hidden_states).float()

    def generate(self, input_ids, images=None, **kwargs) -> torch.Tensor:
        """New token ids [B, T] (prompt excluded, padded with the pad id after EOS); see `generation.generate`."""
        from llava.model.language_model.generation import generate

        return generate(self, input_ids, images=images, **kwargs)
