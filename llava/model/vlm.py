"""What every model family shares on top of its modules: prefill through our decoder loop (with the pruning plan),
the static-cache decode step (optionally compiled), generation, device and attention-implementation handling.

A family (`LlavaLlamaForCausalLM`, `QwenVLForCausalLM`) holds `model` (`embed_tokens`, `layers`, `norm`,
`rotary_emb`, its vision modules) and `lm_head`, and supplies `prepare_inputs` (tokens + images -> a left-padded
`MultimodalInputs` with its rotary positions), `get_vision_tower` and `nominal_visual_tokens`.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from llava.model.language_model.cache import DecoderCache
from llava.model.language_model.decoder import ATTN_IMPLEMENTATIONS, DecoderLoop, SequenceState
from llava.model.llava_arch import MultimodalInputs
from llava.sparse.accounting import SampleAccount, Timer
from llava.sparse.attention_rows import wrapped_name
from llava.sparse.engine import PruningMethod, inputs_layouts


@dataclasses.dataclass
class PrefillOutput:
    hidden_states: torch.Tensor  # final-norm hidden states [B, L, D]
    inputs: MultimodalInputs
    cache: DecoderCache | None
    accounts: list[SampleAccount]


def ids_on_device(input_ids, attention_mask, device):
    """A family's prompt ids ([B, T] or [T] tensor, or a list of 1-D tensors) and optional mask on `device`, a
    single prompt given as [T] made a batch of one."""
    if isinstance(input_ids, torch.Tensor):
        input_ids = input_ids.to(device)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
    else:
        input_ids = [ids.to(device) for ids in input_ids]
    return input_ids, None if attention_mask is None else attention_mask.to(device)


class VisionLanguageModel(nn.Module):
    """The shared inference machinery of a model family (see the module docstring)."""

    def __init__(self, config, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.set_attn_implementation(attn_implementation)
        self.pruning = PruningMethod()
        self.last_accounts: list[SampleAccount] = []  # efficiency accounting of the last generate() call
        self.device_map: dict[str, torch.device] | None = None  # module -> device when loaded over several devices
        self._compiled_step = None  # torch.compile'd `step_logits` (`compile_decode`)

    def get_model(self):
        return self.model

    def get_vision_tower(self):
        raise NotImplementedError

    @property
    def nominal_visual_tokens(self) -> int:
        raise NotImplementedError

    def prepare_inputs(
        self, input_ids, images=None, attention_mask=None, image_sizes=None, videos=None
    ) -> MultimodalInputs:
        """`videos`: one entry per video in the batch, in the form the family's video processor gives; a family
        without video support raises for a non-None value."""
        raise NotImplementedError

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
        used its own anyres grid rule or merge (FasterVLM on LLaVA-NeXT), or shrinks images before the processor
        (downsampling), sets them in `config`, which `process_images(images, image_processor, model.config)` reads."""
        method = method or PruningMethod()
        if self.get_vision_tower() is not None:
            method.bind(self.nominal_visual_tokens)
            if hasattr(method, "validate"):
                method.validate(self)
        self.config.pruning_grid_rule = method.grid_rule
        self.config.pruning_merge_type = method.merge_type
        self.config.pruning_image_downsample = method.image_downsample
        self.pruning = method

    # -- running ----------------------------------------------------------------------------------------------------
    def prefill(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        image_sizes=None,
        max_new_tokens: int = 0,
        videos=None,
    ) -> PrefillOutput:
        """The prompt's pass through the decoder (pruning included). With `use_cache`, each layer's keys go into
        buffers with room for `max_new_tokens` decode steps (more are allocated if a caller decodes further)."""
        inputs = self.prepare_inputs(input_ids, images, attention_mask, image_sizes, videos)
        state = SequenceState(inputs.inputs_embeds, inputs.position_ids, inputs.token_mask, inputs.has_padding)
        layouts = inputs_layouts(inputs)
        cache = DecoderCache(max_new_tokens) if use_cache else None
        with Timer(self.device) as timer:  # the method's own set-up (e.g. SparseVLM's raters) counts as prefill
            plan_start = time.perf_counter()
            plan = self.pruning.plan(layouts, self, inputs)
            plan_ms = (time.perf_counter() - plan_start) * 1e3
            hidden = DecoderLoop(self.model, self.attn_implementation).run(state, cache, plan)
        for account, indices in zip(plan.accounts, inputs.image_indices or [[]] * len(plan.accounts), strict=True):
            account.method_flops += sum(inputs.images[i].method_flops for i in indices)  # the pre-LLM method's work
        plan.finish()
        if cache is not None:
            cache.decode_plan = self.pruning.decode_plan(layouts, state.hidden_states.shape[1])
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
        if cache.decode_plan is not None:  # a per-step plan (host-side choices): run eagerly
            logits = self.step_logits(token_ids, cache, cache.decode_plan)
        elif self._compiled_step is None:
            logits = self.step_logits(token_ids, cache)
        else:
            torch.compiler.cudagraph_mark_step_begin()
            logits = self._compiled_step(token_ids, cache).clone()  # a CUDA graph reuses its output buffer
        cache.advanced()
        return logits

    def step_logits(self, token_ids: torch.Tensor, cache: DecoderCache, plan=None) -> torch.Tensor:
        """The whole decode step on the device: embedding, decoder layers over the cache buffers (under the
        method's `DecodePlan`, if any), lm_head."""
        hidden = DecoderLoop(self.model, self.attn_implementation).step(
            self.model.embed_tokens(token_ids[:, None]), cache, plan
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
        self._compiled_step = torch.compile(self.step_logits, mode=mode, fullgraph=True, dynamic=False)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes=None,
        videos=None,
    ) -> torch.Tensor:
        """Logits [B, L, V] over the spliced, left-padded prefill sequence (no cache)."""
        out = self.prefill(input_ids, images, attention_mask, use_cache=False, image_sizes=image_sizes, videos=videos)
        return self.lm_head(out.hidden_states).float()

    def generate(self, input_ids, images=None, **kwargs) -> torch.Tensor:
        """New token ids [B, T] (prompt excluded, padded with the pad id after EOS); see `generation.generate`."""
        from llava.model.language_model.generation import generate

        return generate(self, input_ids, images=images, **kwargs)
