"""LlavaLlamaForCausalLM: a Llama-family decoder (transformers' layers, our loop) with a CLIP tower and projector;
LLaVA-1.5 and LLaVA-NeXT (anyres views, Llama or Mistral decoder) alike."""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from llava.model.config import LlavaConfig
from llava.model.language_model.cache import DecoderCache
from llava.model.language_model.decoder import ATTN_IMPLEMENTATIONS, DecoderLoop, SequenceState
from llava.model.language_model.family import check_sequence_length, family_of
from llava.model.llava_arch import EncodedImage, MultimodalInputs, encode_images, splice_image_features
from llava.model.multimodal_projector.builder import build_vision_projector
from llava.sparse.accounting import SampleAccount, Timer
from llava.sparse.attention_rows import wrapped_name
from llava.sparse.budget import nominal_visual_tokens
from llava.sparse.engine import PruningMethod, inputs_layouts


class LlavaLlamaModel(nn.Module):
    """Holds the modules under the original checkpoint's `model.` prefix: `embed_tokens`, `layers`, `norm`,
    `mm_projector`, `image_newline` (LLaVA-NeXT's `*unpad` merges only) and, attached by the loader,
    `vision_tower`. The layers are the text family's own transformers classes (Llama, Mistral)."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        text = config.text_config
        family = family_of(text)
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size, text.pad_token_id)
        self.layers = nn.ModuleList(family.layer(text, i) for i in range(text.num_hidden_layers))
        self.norm = family.norm(text.hidden_size, eps=text.rms_norm_eps)
        self.rotary_emb = family.rotary(text)
        self.mm_projector = build_vision_projector(config.mm_projector_type, config.mm_hidden_size, text.hidden_size)
        if config.has_image_newline:
            self.image_newline = nn.Parameter(torch.empty(text.hidden_size))
        else:
            self.image_newline = None
        self.vision_tower = None
        # Per decoder layer, its device when the layers sit on several devices (set by the loader for a device map;
        # None: one device). The decoder loop moves the hidden state between layers that differ.
        self.layer_devices: tuple[torch.device, ...] | None = None

    def _apply(self, fn, recurse=True):
        """`.to()` / `.cuda()` / `.half()`: keep `layer_devices` true to where the layers now are."""
        module = super()._apply(fn, recurse)
        if self.layer_devices is not None:
            devices = tuple(next(layer.parameters()).device for layer in self.layers)
            self.layer_devices = None if len(set(devices)) == 1 else devices
        return module

    def reset_rotary(self, config: LlavaConfig, device: torch.device | str) -> None:
        """Rebuild the (non-persistent) rotary table, e.g. after the model was created on the meta device."""
        with torch.device(device):
            self.rotary_emb = family_of(config.text_config).rotary(config.text_config)


@dataclasses.dataclass
class PrefillOutput:
    hidden_states: torch.Tensor  # final-norm hidden states [B, L, D]
    inputs: MultimodalInputs
    cache: DecoderCache | None
    accounts: list[SampleAccount]


class LlavaLlamaForCausalLM(nn.Module):
    """LLaVA-1.5 / LLaVA-NeXT for inference. `forward` gives prefill logits; `generate` decodes with a KV cache."""

    def __init__(self, config: LlavaConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.model = LlavaLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.set_attn_implementation(attn_implementation)
        self.pruning = PruningMethod()
        self.last_accounts: list[SampleAccount] = []  # efficiency accounting of the last generate() call
        self.device_map: dict[str, torch.device] | None = None  # module -> device when loaded over several devices
        self._compiled_step = None  # torch.compile'd `step_logits` (`compile_decode`)

    # -- LLaVA-compatible accessors ---------------------------------------------------------------------------
    def get_model(self) -> LlavaLlamaModel:
        return self.model

    def get_vision_tower(self):
        return self.model.vision_tower

    @property
    def device(self) -> torch.device:
        """Where logits come out (lm_head's device); the one device of a model that is not spread by a device map."""
        return self.lm_head.weight.device

    @property
    def input_device(self) -> torch.device:
        """Where token ids and images go in (embed_tokens' device, with the vision tower and the first layer)."""
        return self.model.embed_tokens.weight.device

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
        this model now, so that an impossible budget fails before any data is read. A method whose reference
        used its own anyres grid rule or merge (FasterVLM on LLaVA-NeXT) sets them in `config`, which
        `process_images(images, image_processor, model.config)` reads."""
        method = method or PruningMethod()
        tower = self.model.vision_tower
        if tower is not None:
            method.bind(self.nominal_visual_tokens)
            if hasattr(method, "validate"):
                method.validate(self)
        self.config.pruning_grid_rule = method.grid_rule
        self.config.pruning_merge_type = method.merge_type
        self.pruning = method

    @property
    def nominal_visual_tokens(self) -> int:
        """The visual token count budgets are stated against (`llava.sparse.budget`)."""
        tower = self.get_vision_tower()
        return nominal_visual_tokens(self.config, tower.num_patches, tower.config.image_size)

    # -- building blocks ----------------------------------------------------------------------------------------
    def encode_images(self, images, image_sizes=None) -> list[EncodedImage]:
        """Per image, the projected visual block that enters the LLM (merged views, after any pre-LLM pruning)."""
        if self.model.vision_tower is None:
            raise RuntimeError("This model has no vision tower loaded; load it with load_pretrained_model()")
        return encode_images(self, images, image_sizes, self.pruning)

    def prepare_inputs(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes=None,
    ) -> MultimodalInputs:
        encoded = None
        device = self.input_device
        if images is not None:
            if isinstance(images, torch.Tensor):
                images = images.to(device)
            else:
                images = [image.to(device) for image in images]
            encoded = self.encode_images(images, image_sizes)
        if isinstance(input_ids, torch.Tensor):
            input_ids = input_ids.to(device)
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
        else:
            input_ids = [ids.to(device) for ids in input_ids]
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        features = None if encoded is None else [image.features for image in encoded]
        inputs = splice_image_features(
            input_ids, attention_mask, features, self.model.embed_tokens, self.config.tokenizer_model_max_length
        )
        inputs.images = encoded
        check_sequence_length(self.config.text_config, max(inputs.lengths))
        return inputs

    def prefill(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        image_sizes=None,
        max_new_tokens: int = 0,
    ) -> PrefillOutput:
        """The prompt's pass through the decoder (pruning included). With `use_cache`, each layer's keys go into
        buffers with room for `max_new_tokens` decode steps (more are allocated if a caller decodes further)."""
        inputs = self.prepare_inputs(input_ids, images, attention_mask, image_sizes)
        state = SequenceState(inputs.inputs_embeds, inputs.position_ids, inputs.token_mask, inputs.has_padding)
        layouts = inputs_layouts(inputs)
        cache = DecoderCache(max_new_tokens) if use_cache else None
        with Timer(self.device) as timer:  # the method's own set-up (e.g. SparseVLM's raters) counts as prefill
            plan_start = time.perf_counter()
            plan = self.pruning.plan(layouts, self, inputs)
            plan_ms = (time.perf_counter() - plan_start) * 1e3
            hidden = DecoderLoop(self.model, self.attn_implementation).run(state, cache, plan)
        plan.finish()
        for account in plan.accounts:
            account.prefill_ms = timer.ms
            if self.device.type == "cpu":
                account.method_ms = (account.method_ms or 0.0) + plan_ms
        return PrefillOutput(hidden, inputs, cache, plan.accounts)

    def decode_step(self, token_ids: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Logits [B, V] for one new token per sample, appended to `cache` (compiled if `compile_decode` was
        called)."""
        if self.model.layer_devices is not None:  # the ids come from the logits, on the last layer's device
            token_ids = token_ids.to(self.input_device)
        cache.reserve()
        if self._compiled_step is None:
            logits = self.step_logits(token_ids, cache)
        else:
            torch.compiler.cudagraph_mark_step_begin()
            logits = self._compiled_step(token_ids, cache).clone()  # a CUDA graph reuses its output buffer
        cache.advanced()
        return logits

    def step_logits(self, token_ids: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """The whole decode step on the device: embedding, decoder layers over the cache buffers, lm_head."""
        hidden = DecoderLoop(self.model, self.attn_implementation).step(
            self.model.embed_tokens(token_ids[:, None]), cache
        )
        return self.lm_head(hidden[:, -1]).float()

    def compile_decode(self, mode: str | None = "auto") -> None:
        """Decode through `torch.compile(step_logits)`: mode "auto" is "reduce-overhead" (CUDA graphs) on a GPU and
        inductor's default on CPU; None goes back to eager. Prefill and pruning stay eager. One device, and eager or
        sdpa attention (flash-attention's unpadding has data-dependent shapes)."""
        if mode is None:
            self._compiled_step = None
            return
        if self.model.layer_devices is not None:
            raise ValueError("--compile needs the whole model on one device (no --device-map)")
        if self.attn_implementation == "flash_attention_2":
            raise ValueError("--compile needs --attn-implementation sdpa or eager, not flash_attention_2")
        if mode == "auto":
            mode = "reduce-overhead" if self.device.type == "cuda" else None
        # Each kept-token schedule and batch size is its own shape; allow many before falling back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self._compiled_step = torch.compile(self.step_logits, mode=mode, fullgraph=True)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes=None,
    ) -> torch.Tensor:
        """Logits [B, L, V] over the spliced, left-padded prefill sequence (no cache)."""
        out = self.prefill(input_ids, images, attention_mask, use_cache=False, image_sizes=image_sizes)
        return self.lm_head(out.hidden_states).float()

    def generate(self, input_ids, images=None, **kwargs) -> torch.Tensor:
        """New token ids [B, T] (prompt excluded, padded with the pad id after EOS); see `generation.generate`."""
        from llava.model.language_model.generation import generate

        return generate(self, input_ids, images=images, **kwargs)
