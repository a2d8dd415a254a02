"""Train the bundled tiny LLaVA from scratch on the synthetic benchmark, reproducibly from a seed.

    python -m llava.train.train_tiny --out /tmp/tiny --minutes 70 --grow-at 0.7 --seed 0
    python -m llava.train.train_tiny --init-from /tmp/tiny --out assets/tiny-llava --minutes 20 --lr 5e-4 \\
        --warmup 20 --prune-augment 0.5 --prune-content 0.5 --seed 2

(the bundled model: the second run continues the first, showing the LLM shortened visual blocks, see
`content_first_kept`).

Architecture (the LLaVA-1.5 layout at toy width): a CLIP ViT at 336 px / patch 14 (576 patch tokens + [CLS]; 3
layers, the features read at layer -2), the mlp2x_gelu projector, and a 20-layer Llama decoder (so SparseVLM's
pruning layers 2, 6, 15 and v1.0's 19 exist; RoPE theta 1e6 so that 24-dim heads can match by content across the
image) with its own small tokenizer. Everything is trained (tower included) on freshly drawn scenes. Per step:

- all questions about an image ride in one sequence, each in its own attention block (`conversation`,
  `segment_mask`): one pass over the 576 image tokens teaches every answer, and each answer sees exactly its
  evaluation prompt;
- the decoder starts with `--base-layers` (4) and grows to 20 at `--grow-at` of the run (`grow`), five times
  cheaper per step while the model learns to look;
- besides the answers, three auxiliary targets: a linear probe on the tower's features says what each patch shows,
  each projected visual token scores the words of what it shows highest among the word embeddings (`--align`,
  LLaVA's feature alignment in miniature), and one head of layer `--ground-layer` (2) attends, from each position
  that predicts an answer token, to the patches that answer needs, and one head of the layer before to the
  words of its question that name those objects (`grounding_loss`). Without these a
  from-scratch model did not learn to bind "the square" to its patches within the budget (see the issue notes).

`train_log.txt` gets the losses every 20 steps and the teacher-forced held-out accuracy per question type every
`--eval-every` steps, after the command itself. The result is written in the original LLaVA on-disk format and
loads with `load_pretrained_model` like any checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token
from llava.model.config import LlavaConfig
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower, cls_attention
from llava.model.multimodal_encoder.image_processor import CLIPImagePreprocessor
from llava.synthetic.scenes import (
    COLORS,
    NUM_PATCH_LABELS,
    SHAPES,
    SIGN,
    SUFFIX,
    digit_label,
    draw,
    evidence_patches,
    make_scene,
    patch_labels,
    questions_for,
    shape_label,
)
from llava.testing.tokenizer import save_tokenizer

MODEL_DIR, TOWER_DIR = "llava-tiny-synthetic", "clip-tiny-synthetic"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_corpus() -> list[str]:
    words = " ".join(list(SHAPES) + [s + "s" for s in SHAPES] + list(COLORS))
    digits = " ".join(str(i) for i in range(100))
    return [
        words,
        digits,
        "Which shape is further left, the circle or the triangle? Which shape is higher up?",
        "How many objects are there? What number is written on the sign? What color is the square?",
        "What shape is the blue object? Is there an orange circle in the image?",
        SUFFIX,
    ]


def build_model(tokenizer, vocab_size: int, args, tower_name: str):
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=args.vision_hidden,
        intermediate_size=4 * args.vision_hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=336,
        patch_size=14,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=2048,
        rope_theta=args.rope_theta,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(text_config=text, mm_vision_tower=tower_name, mm_hidden_size=args.vision_hidden)
    model = LlavaLlamaForCausalLM(config)
    clip = CLIPVisionModel(vision)
    tower = CLIPVisionTower(clip, config.mm_vision_select_layer, "patch")
    model.model.vision_tower = tower
    return model, clip, vision


def conversation(tokenizer, qa: list[tuple[str, str]]) -> tuple[list[int], list[int], list[int]]:
    """Token ids, labels and segments of all questions about one image packed into one sequence: the prompt up to
    the image (segment 0), then one tail per question (segment i + 1: the question, "ASSISTANT:", the answer and
    </s>). Only answers are learned. With `segment_mask` each tail sees the shared part and itself only, at the
    positions it would have right after the image, so every tail is exactly the evaluation prompt of its question
    (and no answer can be copied from another question's words, a shortcut plain multi-turn training taught)."""
    prefix, ids, labels, segments = None, [], [], []
    for i, (question, answer) in enumerate(qa):
        conv = get_conv_template("vicuna_v1")
        conv.append_message(conv.roles[0], "<image>\n" + question + SUFFIX)
        conv.append_message(conv.roles[1], None)
        prompt = tokenizer_image_token(conv.get_prompt(), tokenizer)
        k = prompt.index(IMAGE_TOKEN_INDEX) + 1
        if prefix is None:
            prefix = prompt[:k]
            ids, labels, segments = list(prefix), [IGNORE_INDEX] * k, [0] * k
        assert prompt[:k] == prefix, "every question shares the prompt up to the image"
        answer_ids = tokenizer(answer).input_ids[1:] + [tokenizer.eos_token_id]
        ids += prompt[k:] + answer_ids
        labels += [IGNORE_INDEX] * (len(prompt) - k) + answer_ids
        segments += [i + 1] * (len(prompt) - k + len(answer_ids))
    return ids, labels, segments


def make_batch(rng: random.Random, tokenizer, processor, batch: int, turns: int, num_shapes=(2, 4)):
    """(pixels, ids, labels, segments, patch labels, question types, evidence): `evidence` is a bool [answer tokens
    of the batch, 576] telling which patches each answer token needs (`evidence_patches`), for `grounding_loss`."""
    images, ids, labels, segments, patches, types, evidence = [], [], [], [], [], [], []
    for _ in range(batch):
        scene = make_scene(rng, num_shapes)
        scene_labels = patch_labels(scene)
        patches.append(torch.tensor(scene_labels))
        qa = questions_for(scene, rng)
        rng.shuffle(qa)
        qa = qa[:turns]
        i, l_, s_ = conversation(tokenizer, [(q, a) for _, q, a in qa])
        images.append(draw(scene))
        ids.append(torch.tensor(i))
        labels.append(torch.tensor(l_))
        segments.append(torch.tensor(s_))
        types.append([t for t, _, _ in qa])
        learned = [seg for seg, label in zip(s_, l_, strict=True) if label != IGNORE_INDEX]
        for q_index, (_, question, _) in enumerate(qa):
            needs = evidence_patches(scene, question, scene_labels)
            for j in range(learned.count(q_index + 1)):  # the answer's tokens and its </s>
                row = torch.zeros(len(scene_labels), dtype=torch.bool)
                row[needs[j] if j < len(needs) else []] = True
                evidence.append(row)
    pixels = processor.preprocess(images)["pixel_values"]
    return pixels, ids, labels, segments, torch.stack(patches), types, torch.stack(evidence)


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Rotary positions [L] of a packed sequence: the shared part counts 0, 1, ...; each tail restarts right
    after it."""
    index = torch.arange(len(segments))
    shared = int((segments == 0).sum())
    starts = torch.zeros(int(segments.max()) + 1, dtype=torch.long)
    for seg in range(1, len(starts)):
        starts[seg] = int((segments == seg).nonzero()[0, 0])
    return torch.where(segments == 0, index, shared + index - starts[segments])


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool: a token sees earlier tokens of its own segment and the whole shared segment 0; padding
    (segment -1) sees only itself, so no softmax row is empty."""
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(segments.shape[1], segments.shape[1], dtype=torch.bool).tril()
    allowed = ((seg_k == 0) & (seg_q >= 0) | (seg_k == seg_q)) & causal  # segment 0 comes first
    return (allowed | torch.eye(segments.shape[1], dtype=torch.bool))[:, None]


@dataclasses.dataclass
class Answers:
    visual: torch.Tensor  # [B, 576, C] tower features
    features: torch.Tensor  # [B, 576, D] projected visual tokens (all of them, also under `kept`)
    logits: torch.Tensor  # [N, V] at every position that predicts an answer token
    targets: torch.Tensor  # [N] those tokens
    grounding: torch.Tensor | None  # [N, 576] log-attention of head 0 of `ground_layer` over the visual tokens
    pointing: torch.Tensor | None  # [N, L] log-attention of head 0 of the layer before over the question's tokens
    keywords: torch.Tensor | None  # [N, L] where the words naming the objects of each answer's question are
    cls_output: torch.Tensor  # [B, C] the tower's [CLS] token at the selected layer
    cls_attention: torch.Tensor  # [B, 576] its head-averaged attention over the patches there (FasterVLM's score)
    kept: torch.Tensor | None = None  # [N, k] the patches each answer token's sample let into the LLM (augmentation)


def forward_answers(
    model: LlavaLlamaForCausalLM,
    pixels,
    ids,
    labels,
    segments,
    layers=None,
    ground_layer: int | None = None,
    keyword_ids: list[list[int]] | None = None,
    kept: torch.Tensor | None = None,
) -> Answers:
    """Run the decoder `layers` (default: all) under `segment_mask`; with `ground_layer`, also where that layer's
    first head looks among the visual tokens from each position that predicts an answer token, and where the
    previous layer's first head looks among the tokens of its own question (`keyword_ids`: the object words).
    `kept` [B, k] (sorted patch indices): only those visual tokens enter the LLM, as after a pre-LLM pruning
    method (the sequence is shorter and the text's positions move up, which a model trained on 576 tokens only
    never sees)."""
    tower = model.model.vision_tower
    hidden, normed = tower.hidden_states_and_attention_input(pixels)
    visual = tower.feature_select(hidden)
    cls_row = cls_attention(tower.selected_attention, normed).mean(dim=1)
    projected = model.model.mm_projector(visual)
    features = projected  # what enters the LLM
    if kept is not None:
        features = projected.gather(1, kept[..., None].expand(-1, -1, projected.shape[-1]))
    num_visual = features.shape[1]
    image_start = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0, 0])  # the same in every sample (shared prefix)

    def splice(per_token: torch.Tensor, image_fill) -> torch.Tensor:
        """A per-token-id tensor with the image token replaced by `num_visual` entries of `image_fill`."""
        image = torch.full((num_visual, *per_token.shape[1:]), image_fill, dtype=per_token.dtype)
        return torch.cat([per_token[:image_start], image, per_token[image_start + 1 :]])

    embeds = []
    for b, ids_b in enumerate(ids):
        text = model.model.embed_tokens(torch.cat([ids_b[:image_start], ids_b[image_start + 1 :]]))
        embeds.append(torch.cat([text[:image_start], features[b], text[image_start:]]))
    longest = max(len(e) for e in embeds)

    def pad_stack(seqs: list[torch.Tensor], value) -> torch.Tensor:
        return torch.stack([nn.functional.pad(t, (0, longest - len(t)), value=value) for t in seqs])

    hidden = torch.stack([nn.functional.pad(e, (0, 0, 0, longest - len(e))) for e in embeds])
    target = pad_stack([splice(lab, IGNORE_INDEX) for lab in labels], IGNORE_INDEX)
    segs = [splice(s, 0) for s in segments]  # the image belongs to the shared segment 0
    seg = pad_stack(segs, -1)
    positions = pad_stack([segment_positions(s) for s in segs], 0)
    mask = segment_mask(seg)
    text_model = model.model
    rotary = text_model.rotary_emb(hidden, positions)
    pos = (target[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)  # only positions that predict an answer token
    grounding = pointing = keywords = None
    same_question = (seg[pos][:, None] == seg[pos[0]]) & (torch.arange(longest) <= pos[1][:, None])  # [N, L]
    if keyword_ids is not None:
        marks = pad_stack([splice(keyword_marks(ids_b.tolist(), keyword_ids), False) for ids_b in ids], False)
        keywords = (marks & (target == IGNORE_INDEX))[pos[0]] & same_question  # question words, not answers
    on_image = torch.zeros(longest, dtype=torch.bool)
    on_image[image_start : image_start + num_visual] = True
    for idx, layer in enumerate(text_model.layers if layers is None else layers):
        if ground_layer is not None and idx == ground_layer - 1 and keyword_ids is not None:
            pointing = head_attention(layer, hidden, rotary, pos, same_question)
        if idx == ground_layer:
            grounding = head_attention(layer, hidden, rotary, pos, on_image.expand(len(pos[0]), -1))[:, on_image]
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
    hidden = text_model.norm(hidden)
    logits = model.lm_head(hidden[:, :-1][pos])
    answer_kept = None if kept is None else kept[pos[0]]  # [N, k]: the patches each answer token's sample kept
    return Answers(
        visual, projected, logits, target[:, 1:][pos], grounding, pointing, keywords, hidden[:, 0], cls_row, answer_kept
    )


def head_attention(layer, hidden: torch.Tensor, rotary, queries, allowed: torch.Tensor) -> torch.Tensor:
    """[N, L] log-softmax over the `allowed` keys ([N, L] bool) of the first head's scores in `layer` (input
    `hidden` [B, L, D]) from the query positions `queries` ((batch, position) index tensors), RoPE applied as the
    layer applies it; -inf elsewhere."""
    from transformers.models.llama.modeling_llama import rotate_half

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    batch_idx, query_idx = queries
    cos, sin = rotary  # [B, L, hd]
    q = attn.q_proj(x[batch_idx, query_idx])[:, : attn.head_dim]  # [N, hd]
    q = q * cos[batch_idx, query_idx] + rotate_half(q) * sin[batch_idx, query_idx]
    k = attn.k_proj(x)[..., : attn.head_dim]  # [B, L, hd]
    k = k * cos + rotate_half(k) * sin
    scores = (k[batch_idx] @ q[:, :, None])[..., 0] * attn.scaling  # [N, L]
    return scores.float().masked_fill(~allowed, float("-inf")).log_softmax(-1)


def cls_loss(cls_head: nn.Module, cls_output: torch.Tensor, cls_row: torch.Tensor, patches: torch.Tensor):
    """(loss, attention mass on content) of the tower's [CLS], an image-level target as CLIP's contrastive
    pretraining gives a real [CLS] one: its output says which objects ((shape, colour) pairs) and which digits the
    picture holds (multi-label, `cls_head`), and its head-averaged attention at the selected layer (`cls_row`
    [B, 576], what FasterVLM ranks by) is spread evenly over the patches that show them (`patches`: the patch
    labels [B, 576]; background and the sign's plain face are not content)."""
    present = torch.zeros(len(patches), NUM_PATCH_LABELS).scatter_(1, patches, 1.0)[:, SIGN + 1 :]
    label_loss = nn.functional.binary_cross_entropy_with_logits(cls_head(cls_output).float(), present)
    content = (patches > SIGN).float()
    target = content / content.sum(-1, keepdim=True).clamp_min(1)
    attention_loss = -(target * cls_row.clamp_min(1e-12).log()).sum(-1).mean()
    return label_loss + attention_loss, (cls_row * content).sum(-1).mean()


def random_kept(rng: random.Random, batch: int, patches: int, sizes: tuple[int, ...]) -> torch.Tensor:
    """[batch, k] sorted random patch subsets of one size k drawn from `sizes`: the augmentation that shows the LLM
    shortened visual blocks, whichever method shortens them (random subsets favour none)."""
    k = rng.choice(sizes)
    return torch.stack([torch.tensor(sorted(rng.sample(range(patches), k))) for _ in range(batch)])


def content_first_kept(rng: random.Random, labels: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """[batch, k] sorted patch subsets of one size k drawn from `sizes` that hold each picture's content patches
    first (a random k of them if there are more) and random background after: the blocks a pruner that finds the
    objects leaves (any of them: FastV, SparseVLM, FasterVLM, VisionZip...; the subsets come from the scene's own
    patch labels, no model's scores). Random subsets alone taught the LLM to count from patches spread over the
    whole picture, so object-only blocks lost the counts (see the README)."""
    k = rng.choice(sizes)
    rows = []
    for row in labels:
        content = (row > SIGN).nonzero()[:, 0].tolist()
        background = (row <= SIGN).nonzero()[:, 0].tolist()
        rng.shuffle(content)
        rng.shuffle(background)
        rows.append(torch.tensor(sorted((content + background)[:k])))
    return torch.stack(rows)


def grounding_loss(log_attention: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    """-log of the attention mass on the patches each answer token needs (tokens that need none are skipped)."""
    has = evidence.any(-1)
    if not has.any():
        return log_attention.sum() * 0
    masked = log_attention[has].masked_fill(~evidence[has], float("-inf"))
    return -masked.logsumexp(-1).mean()


def object_word_ids(tokenizer) -> list[list[int]]:
    """Token ids of each colour and shape word as it appears inside a question."""
    return [tokenizer(f"the {word}").input_ids[2:] for word in (*COLORS, *SHAPES)]


def keyword_marks(ids: list[int], words: list[list[int]]) -> torch.Tensor:
    """Bool per token of `ids`: part of one of the `words` (token-id sequences)."""
    marks = torch.zeros(len(ids), dtype=torch.bool)
    for word in words:
        for start in range(len(ids) - len(word) + 1):
            if ids[start : start + len(word)] == word:
                marks[start : start + len(word)] = True
    return marks


def patch_words(tokenizer) -> torch.Tensor:
    """[NUM_PATCH_LABELS, 2] token ids of the words a patch with that label shows (its colour and shape word, or
    its digit as it is written in an answer), IGNORE_INDEX where there is none (background, sign)."""
    table = torch.full((NUM_PATCH_LABELS, 2), IGNORE_INDEX)
    for shape in SHAPES:
        for color in COLORS:
            table[shape_label(shape, color)] = torch.tensor(
                [tokenizer(color).input_ids[1], tokenizer(shape).input_ids[1]]
            )
    for digit in "0123456789":
        left, right = tokenizer(f"{digit}{digit}").input_ids[1:3]
        table[digit_label(0, digit), 0] = left
        table[digit_label(1, digit), 0] = right
    return table


def loss_of(
    model: LlavaLlamaForCausalLM,
    batch,
    patch_head,
    words=None,
    layers=None,
    ground_layer: int | None = None,
    keyword_ids: list[list[int]] | None = None,
    cls_head: nn.Module | None = None,
    kept: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """(answer loss, patch loss, grounding loss, `cls_loss` with `cls_head` else None). The answer loss is the mean
    cross-entropy of the answer tokens. The grounding loss (`grounding_loss`, with `ground_layer`) asks one head to
    look, from each position that predicts an answer token, at the patches that answer needs: the credit
    assignment a from-scratch model otherwise has to discover through 576 visual tokens, and what makes
    attention-based pruning meaningful on this benchmark, as text-to-image attention is in a pretrained LLaVA. The
    patch loss asks a linear probe on the tower's features what each patch shows (an auxiliary target that gives
    the from-scratch tower meaningful features early; the probe is not part of the checkpoint) and, with `words`
    (`patch_words`), asks each projected visual token to score the words of what it shows highest among the LLM's
    input embeddings: LLaVA's feature alignment in miniature, so that a question word and the visual tokens of
    what it names start out alike."""
    pixels, ids, labels, segments, patches, _, evidence = batch
    out = forward_answers(model, pixels, ids, labels, segments, layers, ground_layer, keyword_ids, kept)
    if out.kept is not None:  # the evidence among the visual tokens that entered the LLM
        evidence = evidence.gather(1, out.kept)
    visual, features = out.visual, out.features
    patch_loss = nn.functional.cross_entropy(patch_head(visual).flatten(0, 1).float(), patches.flatten())
    if words is not None:
        scores = features @ model.model.embed_tokens.weight.T  # [B, P, vocab]
        wanted = words[patches]  # [B, P, 2]
        for column in range(2):
            if (wanted[..., column] != IGNORE_INDEX).any():
                patch_loss = patch_loss + 0.5 * nn.functional.cross_entropy(
                    scores.flatten(0, 1).float(), wanted[..., column].flatten(), ignore_index=IGNORE_INDEX
                )
    grounding = torch.zeros(()) if out.grounding is None else grounding_loss(out.grounding, evidence)
    if out.pointing is not None:
        grounding = grounding + grounding_loss(out.pointing, out.keywords)
    cls = None if cls_head is None else cls_loss(cls_head, out.cls_output, out.cls_attention, patches)
    return nn.functional.cross_entropy(out.logits.float(), out.targets), patch_loss, grounding, cls


@torch.no_grad()
def validate(model: LlavaLlamaForCausalLM, batches, layers=None) -> str:
    """Teacher-forced accuracy of each answer's first token, per question type, on fixed held-out scenes: a cheap
    progress signal for the log (the real measure is the benchmark scorer on generated answers)."""
    model.eval()
    hits, totals = {}, {}
    for pixels, ids, labels, segments, _, types, _ in batches:
        out = forward_answers(model, pixels, ids, labels, segments, layers)
        correct = out.logits.argmax(-1) == out.targets  # every answer token of the batch, sample after sample
        # answers are runs of labelled positions; their first tokens come in conversation order
        firsts = []
        for lab in labels:
            predicted = lab[1:] != IGNORE_INDEX
            firsts.append((predicted & ~torch.cat([torch.tensor([False]), predicted[:-1]]))[predicted])
        for ok, first, kind in zip(correct.split([len(f) for f in firsts]), firsts, types, strict=True):
            for t, hit in zip(kind, ok[first].tolist(), strict=True):
                hits[t] = hits.get(t, 0) + hit
                totals[t] = totals.get(t, 0) + 1
    model.train()
    overall = 100 * sum(hits.values()) / sum(totals.values())
    return f"val {overall:.1f} " + " ".join(f"{t}={100 * hits[t] / totals[t]:.0f}" for t in sorted(totals))


@torch.no_grad()
def grow(layers: nn.ModuleList, trained: int) -> list[nn.Module]:
    """Turn the `trained`-layer net into the full-depth one without changing what it computes (progressive
    stacking): each new layer takes the last trained layer's norms, attention and MLP input weights but keeps its
    zero output projections, so it starts as an identity whose attention already looks where a trained layer
    looks, and learns from there."""
    source = layers[trained - 1]
    for layer in layers[trained:]:
        for name, param in source.state_dict().items():
            if not name.endswith(("o_proj.weight", "down_proj.weight")):
                layer.state_dict()[name].copy_(param)
    return list(layers)


def load_run(model, clip, folder: Path) -> None:
    """The weights a `save` wrote into `folder` (LLM + projector, and the CLIP tower), into freshly built modules."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(folder / MODEL_DIR / "model.safetensors")), strict=False)
    if unexpected or any(not k.startswith("model.vision_tower.") for k in missing):
        raise ValueError(f"{folder}: not a train_tiny run of this shape ({unexpected or missing})")
    missing, unexpected = clip.load_state_dict(load_file(str(folder / TOWER_DIR / "model.safetensors")), strict=False)
    if missing:
        raise ValueError(f"{folder / TOWER_DIR}: tower weights missing ({missing})")


def save(model, clip, processor, tokenizer_dir: Path, out: Path) -> None:
    from safetensors.torch import save_file

    model_dir, tower_dir = out / MODEL_DIR, out / TOWER_DIR
    clip.save_pretrained(str(tower_dir))
    processor.save_pretrained(tower_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}
    save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps(model.config.to_original_dict(), indent=2))
    for name in TOKENIZER_FILES:
        (model_dir / name).write_bytes((tokenizer_dir / name).read_bytes())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/tiny-llava"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=65.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: time budget only)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rope-theta", type=float, default=1e6, help="slow rotary: narrow heads match by content")
    parser.add_argument("--vision-hidden", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patch-loss-weight", type=float, default=1.0)
    parser.add_argument("--ground-layer", type=int, default=2, help="layer whose first head is grounded (-1: off)")
    parser.add_argument("--ground-weight", type=float, default=1.0)
    parser.add_argument("--cls-weight", type=float, default=1.0, help="weight of the [CLS] target (0: off)")
    parser.add_argument("--align", type=int, default=1, help="1: align visual tokens with word embeddings")
    parser.add_argument("--base-layers", type=int, default=4, help="train this many layers first (0: all)")
    parser.add_argument("--grow-at", type=float, default=0.7, help="grow to --layers at this fraction of the run")
    parser.add_argument("--curriculum-steps", type=int, default=0, help="first steps on one-shape scenes")
    parser.add_argument(
        "--prune-augment", type=float, default=0.0, help="share of batches whose visual tokens are randomly pruned"
    )
    parser.add_argument(
        "--prune-content", type=float, default=0.0, help="share of those whose subsets keep content patches first"
    )
    parser.add_argument("--prune-sizes", type=int, nargs="+", default=[64, 128, 192, 288], help="their token counts")
    parser.add_argument("--init-from", type=Path, default=None, help="continue from a saved run's folder (all layers)")
    parser.add_argument("--save-every", type=int, default=500, help="write the checkpoint every N steps")
    parser.add_argument("--eval-every", type=int, default=100, help="log held-out answer accuracy every N steps")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = args.out / MODEL_DIR
    if args.init_from is not None:  # keep the saved run's tokenizer (its ids are what the weights know)
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            source = args.init_from / MODEL_DIR / name
            if source.resolve() != (tokenizer_dir / name).resolve():
                (tokenizer_dir / name).write_bytes(source.read_bytes())
        vocab_size = json.loads((args.init_from / MODEL_DIR / "config.json").read_text())["vocab_size"]
    else:
        vocab_size = save_tokenizer(tokenizer_dir, corpus=tokenizer_corpus())
    from llava.model.builder import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    processor = CLIPImagePreprocessor(size=336, crop_size=336)
    model, clip, _ = build_model(tokenizer, vocab_size, args, f"../{TOWER_DIR}")
    model.model.vision_tower.truncate_unused_layers()  # the last tower layer is never read (as in LLaVA)
    base = args.base_layers or args.layers
    if args.init_from is not None:  # a trained run: every layer, as saved
        load_run(model, clip, args.init_from)
        base = args.layers
    else:
        with torch.no_grad():
            for i, layer in enumerate(model.model.layers):  # small residual outputs: a deep narrow net trains stably
                scale = 1 / math.sqrt(2 * base) if i < base else 0.0  # layers past `base` start as identities
                layer.self_attn.o_proj.weight.mul_(scale)
                layer.mlp.down_proj.weight.mul_(scale)
    active = list(model.model.layers[:base])
    patch_head = nn.Linear(args.vision_hidden, NUM_PATCH_LABELS)
    cls_head = nn.Linear(args.vision_hidden, NUM_PATCH_LABELS - SIGN - 1) if args.cls_weight else None
    words = patch_words(tokenizer) if args.align else None
    keyword_ids = object_word_ids(tokenizer)
    heads = [patch_head] + ([cls_head] if cls_head is not None else [])  # probes, not part of the checkpoint
    params = [p for p in model.parameters() if p.requires_grad] + [p for h in heads for p in h.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    log = (args.out / "train_log.txt").open("w")
    command = " ".join(argv if argv is not None else sys.argv[1:])
    log.write(f"command: python -m llava.train.train_tiny {command}\n{json.dumps(vars(args), default=str)}\n")
    held_out = random.Random(args.seed + 10_000)  # validation scenes, never drawn for training
    val_batches = [make_batch(held_out, tokenizer, processor, 8, args.turns) for _ in range(4)]
    budget = args.minutes * 60
    start, step, smooth = time.time(), 0, None
    model.train()
    while True:
        elapsed = time.time() - start
        if (args.steps and step >= args.steps) or (not args.steps and elapsed >= budget):
            break
        progress = step / args.steps if args.steps else elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        num_shapes = (1, 1) if step < args.curriculum_steps else (2, 4)  # warm-up: one shape, nothing to tell apart
        if len(active) < args.layers and progress >= args.grow_at:
            active = grow(model.model.layers, len(active))
            log.write(f"step {step} grow: {args.base_layers} -> {len(active)} layers\n")
        batch = make_batch(rng, tokenizer, processor, args.batch, args.turns, num_shapes)
        kept = None
        if args.prune_augment and rng.random() < args.prune_augment:
            if rng.random() < args.prune_content:
                kept = content_first_kept(rng, batch[4], tuple(args.prune_sizes))
            else:
                kept = random_kept(rng, args.batch, batch[4].shape[1], tuple(args.prune_sizes))
        answer_loss, patch_loss, ground_loss, cls = loss_of(
            model, batch, patch_head, words, active, args.ground_layer, keyword_ids, cls_head, kept
        )
        loss = answer_loss + args.patch_loss_weight * patch_loss + args.ground_weight * ground_loss
        if cls is not None:
            loss = loss + args.cls_weight * cls[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        smooth = answer_loss.item() if smooth is None else 0.98 * smooth + 0.02 * answer_loss.item()
        if step % 20 == 0:
            line = (
                f"step {step} t={elapsed:.0f}s lr={lr:.2e} answer_loss={answer_loss.item():.4f} "
                f"smooth={smooth:.4f} patch_loss={patch_loss.item():.4f} ground_loss={ground_loss.item():.4f}"
            )
            if cls is not None:  # the [CLS] target's loss and the share of [CLS] attention on content patches
                line += f" cls_loss={cls[0].item():.4f} cls_on_content={cls[1].item():.3f}"
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
        if step % args.eval_every == 0:
            line = f"step {step} {validate(model, val_batches, active)}"
            print(line, flush=True)
            log.write(line + "\n")
        if step % args.save_every == 0:
            save(model, clip, processor, tokenizer_dir, args.out)
    save(model, clip, processor, tokenizer_dir, args.out)
    log.write(f"done: {step} steps in {time.time() - start:.0f}s\n")
    log.close()


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
