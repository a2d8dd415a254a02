"""Generation: batching with left padding, cache consistency, attention backends, EOS, sampling."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llava.model.language_model.generation import _filter_logits

from .helpers import pixels, prompt_ids, random_image

QUESTIONS = [
    "What is this?",
    "Is there a red circle in the image? Please answer yes or no.",
    "Describe the image in detail. Which object is left of the triangle, and how many shapes are there?",
]


@pytest.fixture(scope="module")
def batch(loaded):
    tokenizer, model, image_processor, _ = loaded
    ids = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    px = pixels(image_processor, model, *[random_image(i) for i in range(3)])
    return ids, px


def _padded(ids: list[torch.Tensor], pad_id: int):
    """Right-padded ids + mask, as a tokenizer would give them; the model must re-pad on the left."""
    longest = max(len(x) for x in ids)
    out = torch.full((len(ids), longest), pad_id)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return out, mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batch_of_three_equals_one_by_one(loaded, batch, attn):
    tokenizer, model, _, _ = loaded
    model.set_attn_implementation(attn)
    try:
        ids, px = batch
        single = [model.generate(x[None], images=px[i : i + 1], max_new_tokens=12)[0] for i, x in enumerate(ids)]
        assert len({tuple(s.tolist()) for s in single}) == 3  # the samples really differ, so mixing them would show
        padded, mask = _padded(ids, tokenizer.pad_token_id)
        batched = model.generate(padded, images=px, attention_mask=mask, max_new_tokens=12)
        for i in range(3):
            assert batched[i, : len(single[i])].tolist() == single[i].tolist()
        # the prefill logits of each sample's last real token agree too
        last = model(padded, images=px, attention_mask=mask)[:, -1]
        for i, x in enumerate(ids):
            torch.testing.assert_close(last[i], model(x[None], images=px[i : i + 1])[0, -1], atol=1e-5, rtol=0)
    finally:
        model.set_attn_implementation("sdpa")


def test_eager_and_sdpa_give_the_same_logits(loaded, batch):
    _, model, _, _ = loaded
    ids, px = batch
    sdpa = model(ids[2][None], images=px[2:3])
    model.set_attn_implementation("eager")
    try:
        eager = model(ids[2][None], images=px[2:3])
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(eager, sdpa, atol=1e-4, rtol=0)


def test_cached_decoding_equals_cache_free_forward(loaded, batch):
    """Every decode step's greedy token equals the argmax of a full forward over the prompt + tokens so far."""
    _, model, _, _ = loaded
    ids, px = batch
    generated = model.generate(ids[1][None], images=px[1:2], max_new_tokens=6)[0]
    sequence = ids[1]
    for token in generated.tolist():
        logits = model(sequence[None], images=px[1:2])[0, -1]
        logits[model.config.num_text_tokens :] = float("-inf")
        assert int(logits.argmax()) == token
        sequence = torch.cat([sequence, torch.tensor([token])])


def test_generation_stops_at_eos_and_pads_finished_samples(loaded, batch):
    _, model, _, _ = loaded
    ids, px = batch
    first = int(model.generate(ids[0][None], images=px[:1], max_new_tokens=1)[0, 0])
    out = model.generate(ids[0][None], images=px[:1], max_new_tokens=10, eos_token_id=first)
    assert out.tolist() == [[first]]
    longer = model.generate(ids[1][None], images=px[1:2], max_new_tokens=5)[0]
    if first not in longer.tolist():
        both = model.generate([ids[0], ids[1]], images=px[:2], max_new_tokens=5, eos_token_id=first, pad_token_id=0)
        assert both[0].tolist() == [first] + [0] * (both.shape[1] - 1)
        assert both[1].tolist() == longer.tolist()[: both.shape[1]]


def test_sampling_is_reproducible_with_a_seeded_generator(loaded, batch):
    _, model, _, _ = loaded
    ids, px = batch
    kwargs = dict(images=px[:1], max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95)
    a = model.generate(ids[0][None], generator=torch.Generator().manual_seed(3), **kwargs)
    b = model.generate(ids[0][None], generator=torch.Generator().manual_seed(3), **kwargs)
    assert a.tolist() == b.tolist()


def test_logit_filters_match_transformers_warpers():
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 3
    expected = TemperatureLogitsWarper(0.7)(None, logits.clone())
    expected = TopKLogitsWarper(50)(None, expected)
    expected = TopPLogitsWarper(0.9)(None, expected)
    got = _filter_logits(logits.clone(), temperature=0.7, top_k=50, top_p=0.9)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got[~torch.isinf(got)], expected[~torch.isinf(expected)])


def test_beam_search_is_refused_clearly(loaded, batch):
    _, model, _, _ = loaded
    ids, px = batch
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(ids[0][None], images=px[:1], num_beams=3)
