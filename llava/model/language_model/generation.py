"""Greedy and sampling generation over `LlavaLlamaForCausalLM`'s own prefill / decode steps.

LLaVA's scripts call `model.generate(input_ids, images=..., do_sample=temperature > 0, temperature, top_p,
num_beams=1, max_new_tokens, use_cache=True)` and decode only the new tokens; this reproduces that contract
(HF's defaults included: `top_k=50` when sampling) without going through transformers' `generate`, whose cache
and position bookkeeping assume every layer holds the same sequence.
"""

from __future__ import annotations

import torch


def _filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering, in the order HF's logits warpers apply them."""
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set with mass >= top_p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


@torch.inference_mode()
def generate(
    model,
    input_ids: torch.Tensor | list[torch.Tensor],
    images: torch.Tensor | list[torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
    image_sizes=None,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = 50,
    num_beams: int = 1,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    streamer=None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
    repetition_penalty: float | None = None,
    videos=None,
) -> torch.Tensor:
    """New tokens [B, T]; a sample that emitted EOS is padded with `pad_token_id` (default: EOS) afterwards.

    `repetition_penalty` (default: the checkpoint's generation config, 1.05 for Qwen-VL, else 1.0) divides the
    positive and multiplies the negative logits of every token already in the prompt or the answer, as
    transformers' `RepetitionPenaltyLogitsProcessor` does (an image counts as its image token). `generator` may be one
    generator per sample, so that a sample's draws do not depend on the rest of its batch."""
    if num_beams != 1:
        raise ValueError("num_beams > 1 is not supported (every LLaVA evaluation script uses num_beams=1)")
    if not use_cache:
        raise ValueError("use_cache=False is not supported: generation always keeps a per-layer KV cache")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    text = model.config.text_config
    eos = eos_token_id if eos_token_id is not None else text.eos_token_id
    eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=model.device)
    pad = pad_token_id if pad_token_id is not None else int(eos_ids[0])
    sampling = do_sample and temperature > 0
    if streamer is not None:
        streamer.put(input_ids if isinstance(input_ids, torch.Tensor) else input_ids[0])

    from llava.sparse.accounting import Timer

    with Timer(model.device) as total:
        prefill = model.prefill(
            input_ids,
            images,
            attention_mask,
            use_cache=True,
            image_sizes=image_sizes,
            max_new_tokens=max_new_tokens - 1,
            videos=videos,
        )
        logits = model.lm_head(prefill.hidden_states[:, -1]).float()
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=model.device)
        penalty = getattr(model.config, "repetition_penalty", 1.0) if repetition_penalty is None else repetition_penalty
        seen = _prompt_tokens(model, input_ids, attention_mask, logits.shape[-1]) if penalty != 1.0 else None
        tokens = []
        for step in range(max_new_tokens):
            logits[:, model.config.num_text_tokens :] = float("-inf")
            if seen is not None:
                penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
                logits = torch.where(seen, penalised, logits)
            if sampling:
                probs = _filter_logits(logits, temperature, top_k, top_p).softmax(-1)
                if isinstance(generator, (list, tuple)):  # one generator per sample: rows sample independently
                    rows = zip(probs, generator, strict=True)
                    next_tokens = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in rows])
                else:
                    next_tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                next_tokens = logits.argmax(-1)
            next_tokens = torch.where(finished, torch.full_like(next_tokens, pad), next_tokens)
            tokens.append(next_tokens)
            if seen is not None:
                seen[torch.arange(len(next_tokens), device=seen.device), next_tokens] = True
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            finished |= torch.isin(next_tokens, eos_ids)
            if step + 1 == max_new_tokens or bool(finished.all()):
                break
            logits = model.decode_step(next_tokens, prefill.cache)
    if streamer is not None:
        streamer.end()
    for account in prefill.accounts:
        account.total_ms = total.ms
    model.last_accounts = prefill.accounts
    return torch.stack(tokens, dim=1)


def _prompt_tokens(model, input_ids, attention_mask, vocab: int) -> torch.Tensor:
    """[B, V] bool: the tokens of each sample's prompt (its image placeholders as the model's image token)."""
    rows = list(input_ids) if not isinstance(input_ids, torch.Tensor) or input_ids.dim() > 1 else [input_ids]
    seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=model.device)
    image_token = getattr(model.config, "image_token_id", None)
    for b, ids in enumerate(rows):
        ids = ids.to(model.device)
        if attention_mask is not None:
            ids = ids[attention_mask[b].to(model.device).bool()]
        if image_token is not None:
            ids = torch.where(ids < 0, image_token, ids)
        seen[b, ids[ids >= 0]] = True
    return seen
