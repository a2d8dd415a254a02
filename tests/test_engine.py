"""The pruning engine: rows-only attention scores, sequence surgery, cache consistency, accounting."""

import pytest
import torch
from transformers import LlamaModel

from llava.model.language_model.decoder import DecoderCache, DecoderLoop, SequenceState
from llava.sparse.engine import PrefillPlan, PruningMethod, layouts_from_spans

from .helpers import pixels, prompt_ids, random_image


class RecordRows(PruningMethod):
    """Asks for given rows at given layers, keeps everything (optionally going through the rebuild)."""

    def __init__(self, layers, rebuild=False, renumber=False):
        self.layers, self.rebuild, self.renumber, self.requests = layers, rebuild, renumber, {}

    def plan(self, layouts, model, inputs):
        method = self

        class Plan(PrefillPlan):
            def rows_request(self, layer_idx, state):
                if layer_idx not in method.layers:
                    return None
                rows = [torch.arange(lay.length - 5, lay.length) for lay in self.layouts]  # last 5 tokens
                return self.make_rows_request(rows, state)

            def prune(self, layer_idx, state, request):
                if request is not None:
                    method.requests[layer_idx] = request
                    if method.rebuild:
                        keep = [torch.arange(lay.visual) for lay in self.layouts]
                        return self.rebuild(state, keep, renumber_positions=method.renumber)
                return state

        text = model.config.text_config
        return Plan(layouts, text.num_hidden_layers, text, model.dtype)


def _hf_llama(model) -> LlamaModel:
    """transformers' own LlamaModel with our decoder weights, eager attention."""
    text = model.config.text_config
    config = type(text)(**{**text.to_dict(), "_attn_implementation": "eager"})
    config._attn_implementation = "eager"
    hf = LlamaModel(config).eval()
    state = {k.removeprefix("model."): v for k, v in model.state_dict().items() if k.startswith("model.")}
    hf.load_state_dict({k: v for k, v in state.items() if k in hf.state_dict()}, strict=True)
    return hf


@pytest.fixture(scope="module")
def sample(loaded):
    tokenizer, model, image_processor, _ = loaded
    return prompt_ids(tokenizer, "Is there a red circle in the image? Please answer yes or no."), pixels(
        image_processor, model, random_image(7)
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_rows_only_scores_equal_rows_of_the_full_attention_matrix(loaded, sample, attn):
    _, model, _, _ = loaded
    ids, px = sample
    method = RecordRows(layers={1, 2})
    model.set_attn_implementation(attn)
    model.set_pruning(method)
    try:
        out = model.prefill(ids[None], images=px, use_cache=False)
    finally:
        model.set_pruning(None)
        model.set_attn_implementation("sdpa")
    with torch.no_grad():
        reference = _hf_llama(model)(
            inputs_embeds=out.inputs.inputs_embeds, output_attentions=True, use_cache=False
        ).attentions
    length = out.inputs.lengths[0]
    for layer in (1, 2):
        got = method.requests[layer].probs[0]  # [H, 5, L]
        expected = reference[layer][0, :, length - 5 : length, :].float()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        assert got.shape == (model.config.text_config.num_attention_heads, 5, length)


@pytest.mark.parametrize("renumber", [False, True])
def test_keeping_every_token_through_the_engine_gives_the_unpruned_logits(loaded, sample, renumber):
    _, model, _, _ = loaded
    ids, px = sample
    unpruned = model(ids[None], images=px)
    model.set_pruning(RecordRows(layers={1, 2}, rebuild=True, renumber=renumber))
    try:
        kept_all = model(ids[None], images=px)
    finally:
        model.set_pruning(None)
    torch.testing.assert_close(kept_all, unpruned, atol=1e-5, rtol=0)


def test_rebuild_left_pads_samples_that_keep_different_counts(loaded):
    tokenizer, model, image_processor, _ = loaded
    ids = [prompt_ids(tokenizer, q) for q in ("Q?", "A longer question about the picture?")]
    inputs = model.prepare_inputs(ids, pixels(image_processor, model, random_image(0), random_image(1)))
    layouts = layouts_from_spans(inputs.image_spans, inputs.lengths, inputs.inputs_embeds.shape[1])
    text = model.config.text_config
    plan = PrefillPlan(layouts, text.num_hidden_layers, text, model.dtype)
    state = SequenceState(inputs.inputs_embeds, inputs.position_ids, inputs.token_mask, inputs.has_padding)
    keep = [torch.tensor([0, 5, 9]), torch.tensor([1, 2, 3, 4, 5, 6, 7])]
    new = plan.rebuild(state, keep)
    lengths = [lay.prefix + len(k) + lay.suffix for lay, k in zip(layouts, keep, strict=True)]
    assert [lay.length for lay in plan.layouts] == lengths
    assert new.hidden_states.shape[1] == max(lengths) and new.has_padding
    for b, layout in enumerate(layouts):
        row = new.hidden_states[b, new.token_mask[b]]
        old = state.hidden_states[b, state.token_mask[b]]
        visual = old[layout.prefix : layout.prefix + layout.visual]
        expected = torch.cat([old[: layout.prefix], visual[keep[b]], old[layout.prefix + layout.visual :]])
        torch.testing.assert_close(row, expected)
        positions = new.position_ids[b, new.token_mask[b]]
        visual_positions = layout.prefix + keep[b]  # original positions kept (gaps remain)
        assert positions[layout.prefix : layout.prefix + len(keep[b])].tolist() == visual_positions.tolist()
        assert int(positions[-1]) == layout.length - 1


def test_cache_bytes_and_flops_accounting_of_an_unpruned_prefill(loaded, sample):
    _, model, _, _ = loaded
    ids, px = sample
    model.generate(ids[None], images=px, max_new_tokens=1)
    account = model.last_accounts[0]
    text = model.config.text_config
    n, d, m, layers = len(ids) - 1 + 576, text.hidden_size, text.intermediate_size, text.num_hidden_layers
    assert account.tokens_into_layer == [n] * layers
    assert account.decoder_flops == layers * (4 * n * d * d + 2 * n * n * d + 3 * n * d * m)
    cache = DecoderCache()
    DecoderLoop(model.model, "sdpa").run(
        SequenceState(
            *[
                getattr(model.prepare_inputs(ids[None], px), f)
                for f in ("inputs_embeds", "position_ids", "token_mask", "has_padding")
            ]
        ),
        cache,
    )
    assert account.kv_cache_bytes == cache.nbytes()
    assert account.equal_tokens() == 576 and account.equal_tokens("input") == 576
    assert "[Efficiency INFO] Equal Tokens: 576.00" in account.line()
