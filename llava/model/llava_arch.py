"""Vision tower -> projector -> splice into the text embeddings at the `IMAGE_TOKEN_INDEX` placeholders.

The result is left-padded (so a batch can be generated from its last column) and records where each image's
tokens sit, which is what pre-LLM and in-LLM visual-token pruning needs.
"""

from __future__ import annotations

import dataclasses

import torch

from llava.constants import IMAGE_TOKEN_INDEX


@dataclasses.dataclass
class MultimodalInputs:
    """A left-padded batch of spliced embeddings."""

    inputs_embeds: torch.Tensor  # [B, L, D]
    token_mask: torch.Tensor  # [B, L] bool, False on padding
    position_ids: torch.Tensor  # [B, L], 0 at each sample's first real token
    image_spans: list[list[tuple[int, int]]]  # per sample: (start, length) of each image in padded coordinates
    lengths: list[int]  # per sample: real (unpadded) length
    has_padding: bool
    num_encoded: list[int] | None = None  # per sample: visual tokens out of the tower, before pre-LLM pruning


def encode_images(vision_tower, projector, images: torch.Tensor, pruning=None) -> torch.Tensor:
    """[N, 3, H, W] pixels -> [N, P, D] projected features, in the projector's dtype.

    A pre-LLM pruning method (`pruning.select_before_llm`) picks the patches to keep first, so only those are
    projected; their raster order is kept."""
    if pruning is not None and pruning.needs_cls_attention:
        features, cls_attention = vision_tower.forward_with_cls_attention(images)
    else:
        features, cls_attention = vision_tower(images), None
    keep = None if pruning is None else pruning.select_before_llm(features, cls_attention)
    if keep is not None:
        features = features.gather(1, keep[:, :, None].expand(-1, -1, features.shape[-1]))
    weight = next(projector.parameters(), None)
    if weight is not None:
        features = features.to(weight.dtype)
    return projector(features)


def splice_image_features(
    input_ids: torch.Tensor | list[torch.Tensor],
    attention_mask: torch.Tensor | None,
    image_features: torch.Tensor | list[torch.Tensor] | None,
    embed_tokens: torch.nn.Module,
    max_length: int | None = None,
) -> MultimodalInputs:
    """Replace every `IMAGE_TOKEN_INDEX` in each sample by the next image's features, then left-pad.

    `input_ids` is a padded [B, T] tensor (padding marked False in `attention_mask`) or a list of 1-D tensors.
    Images are consumed in order across the batch; as in LLaVA, a sample without a placeholder still consumes one
    image slot (its features are not inserted).
    """
    if isinstance(input_ids, torch.Tensor):
        if attention_mask is None:
            samples = list(input_ids)
        else:
            samples = [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask, strict=True)]
    else:
        samples = list(input_ids)

    sequences: list[torch.Tensor] = []
    spans: list[list[tuple[int, int]]] = []
    image_idx = 0
    for ids in samples:
        where = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
        if not where:
            sequences.append(embed_tokens(ids))
            spans.append([])
            image_idx += 1
            continue
        if image_features is None:
            raise ValueError("The prompt has an <image> placeholder but no image was given")
        bounds = [-1] + where + [len(ids)]
        pieces = [ids[bounds[i] + 1 : bounds[i + 1]] for i in range(len(bounds) - 1)]
        text_embeds = embed_tokens(torch.cat(pieces)).split([len(p) for p in pieces])
        parts, sample_spans, length = [], [], 0
        for i, text in enumerate(text_embeds):
            parts.append(text)
            length += len(text)
            if i < len(where):
                if image_idx >= len(image_features):
                    raise ValueError(f"The batch has more <image> placeholders than images ({len(image_features)})")
                feature = image_features[image_idx].to(text.dtype)
                image_idx += 1
                parts.append(feature)
                sample_spans.append((length, len(feature)))
                length += len(feature)
        sequences.append(torch.cat(parts))
        spans.append(sample_spans)

    if max_length is not None:
        sequences = [seq[:max_length] for seq in sequences]
    longest = max(len(seq) for seq in sequences)
    batch, hidden = len(sequences), sequences[0].shape[-1]
    first = sequences[0]
    embeds = first.new_zeros((batch, longest, hidden))
    token_mask = torch.zeros((batch, longest), dtype=torch.bool, device=first.device)
    position_ids = torch.zeros((batch, longest), dtype=torch.long, device=first.device)
    for b, seq in enumerate(sequences):
        pad = longest - len(seq)
        embeds[b, pad:] = seq
        token_mask[b, pad:] = True
        position_ids[b, pad:] = torch.arange(len(seq), device=first.device)
        spans[b] = [(start + pad, min(n, len(seq) - start)) for start, n in spans[b] if start < len(seq)]
    has_padding = any(len(seq) != longest for seq in sequences)
    return MultimodalInputs(embeds, token_mask, position_ids, spans, [len(seq) for seq in sequences], has_padding)
