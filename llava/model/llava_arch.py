"""Vision tower -> merge of each image's views -> projector -> splice into the text embeddings at the
`IMAGE_TOKEN_INDEX` placeholders.

The result is left-padded (so a batch can be generated from its last column) and records where each image's
tokens sit and where each visual token came from (view, patch, or newline), which is what pre-LLM and in-LLM
visual-token pruning, the accounting and pictures of kept tokens need.
"""

from __future__ import annotations

import dataclasses

import torch

from llava.constants import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX
from llava.model.anyres import MergeLayout, frames_layout, grid_shape, merge_layout, single_view_layout
from llava.sparse.engine import Selection, apply_selection, split_signals


@dataclasses.dataclass
class MultimodalInputs:
    """A left-padded batch of spliced embeddings."""

    inputs_embeds: torch.Tensor  # [B, L, D]
    token_mask: torch.Tensor  # [B, L] bool, False on padding
    position_ids: torch.Tensor  # [B, L], 0 at each sample's first real token
    image_spans: list[list[tuple[int, int]]]  # per sample: (start, length) of each image in padded coordinates
    lengths: list[int]  # per sample: real (unpadded) length
    has_padding: bool
    image_indices: list[list[int]] = dataclasses.field(default_factory=list)  # per sample: images it holds
    images: list[EncodedImage] | None = None  # every encoded image, in the order they were consumed

    @property
    def num_encoded(self) -> list[int] | None:
        """Per sample: visual tokens of its merged block before pre-LLM pruning."""
        if self.images is None:
            return None
        return [sum(self.images[i].num_encoded for i in indices) for indices in self.image_indices]


@dataclasses.dataclass
class EncodedImage:
    """One image's visual block as it enters the LLM: features, where each token came from, and how many tokens
    the merge produced before any pre-LLM pruning."""

    features: torch.Tensor  # [T, D]
    tokens: MergeLayout
    num_encoded: int
    method_flops: float = 0.0  # the pre-LLM method's own work on this block (`PruningMethod.record_flops`)


def as_views(images: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """LLaVA's image argument as one [views, 3, H, W] tensor per image: a 4-D tensor is one view per image
    (LLaVA-1.5), a 5-D tensor or a list of 4-D tensors holds each image's anyres views, a list of 3-D tensors one
    view per image."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 4:
            return list(images[:, None])
        if images.dim() == 5:
            return list(images)
        raise ValueError(f"images must be [N, 3, H, W] or [N, views, 3, H, W], got shape {tuple(images.shape)}")
    return [image[None] if image.dim() == 3 else image for image in images]


def image_layout(config, num_views: int, side: int, view_size: int, image_size, cls: bool = False) -> MergeLayout:
    """The merged block of one image under the model's merge type and anyres rules (`cls`: each view's features
    start with its [CLS] token, LLaVA's `cls_patch`)."""
    if num_views == 1:
        newline = config.merge_type == "spatial_unpad" and config.has_image_newline
        return single_view_layout(side, newline=newline, cls=cls)
    if cls:
        raise ValueError("cls_patch vision features (llava-hf strategy 'full') cannot be merged over anyres views")
    if not config.is_anyres:
        raise ValueError(
            f"An image came with {num_views} views, but the checkpoint's image_aspect_ratio is "
            f"{config.image_aspect_ratio!r}; only anyres (LLaVA-NeXT) checkpoints take several views per image"
        )
    if config.merge_type == "flat":
        return merge_layout(num_views, side, "flat")
    if image_size is None:
        raise ValueError(
            "LLaVA-NeXT images need their sizes: pass image_sizes=[image.size for image in images] (width, height) "
            "to generate / forward, as LLaVA's scripts do"
        )
    width, height = (int(x) for x in image_size)
    grid = grid_shape((width, height), config.image_grid_pinpoints, view_size, config.grid_rule)
    return merge_layout(num_views, side, config.merge_type, grid, (width, height), config.anyres_rule)


def encode_images(model, images, image_sizes=None, pruning=None) -> list[EncodedImage]:
    """Pixels of every view of every image -> per image, the merged, projected visual block.

    The tower runs once over all views. A pre-LLM pruning method (`pruning.select_tokens`) picks which tokens of
    each merged block to keep first, so only those are projected; the merge order is kept. Newline tokens are
    the checkpoint's `image_newline` embedding."""
    tower = model.model.vision_tower
    # LLaVA merges views only for a 5-D tensor or a list; a 4-D batch is one plain view per image (no newline)
    plain = isinstance(images, torch.Tensor) and images.dim() == 4
    views = as_views(images)
    if image_sizes is not None and len(image_sizes) != len(views):
        raise ValueError(f"{len(views)} images but {len(image_sizes)} image_sizes; give one (width, height) per image")
    pixels = torch.cat(views)
    sizes = [len(v) for v in views]
    if pruning is None:
        features, signals = tower(pixels), None
    else:
        features, signals = pruning.tower_outputs(tower, pixels)
    side = tower.num_patches_per_side
    with_cls = tower.select_feature == "cls_patch"  # each view's features start with its [CLS] token
    layouts, selected = [], []
    per_image = zip(features.split(sizes), split_signals(signals, sizes), strict=True)
    for i, (feats, image_signals) in enumerate(per_image):
        if plain:
            full = single_view_layout(side, cls=with_cls)
        else:
            size = _size(image_sizes, i)
            full = image_layout(model.config, len(feats), side, tower.config.image_size, size, with_cls)
        chosen = None if pruning is None else pruning.select_tokens(full, feats, image_signals)
        tokens, rows = _selected_rows(full, feats, chosen)
        layouts.append((tokens, len(full), image_signals, 0.0 if pruning is None else pruning.take_flops()))
        selected.append(rows)
    return _project(model, layouts, selected, pruning)


def _selected_rows(full: MergeLayout, feats: torch.Tensor, chosen) -> tuple[MergeLayout, torch.Tensor]:
    """The layout and tower features (newline tokens excluded) of one block after `select_tokens`' answer."""
    if isinstance(chosen, Selection):
        tokens, rows = apply_selection(full, None, chosen)
        return tokens, rows[~tokens.is_newline.to(rows.device)]
    tokens = full if chosen is None else full.select(chosen)
    source = tokens.source()
    return tokens, feats.reshape(-1, feats.shape[-1])[source[source >= 0].to(feats.device)]


def _project(model, layouts, selected, pruning) -> list[EncodedImage]:
    """Project every block's rows at once, put `image_newline` at the newline tokens, then let the method choose
    among the projected tokens (`select_projected`)."""
    weight = next(model.model.mm_projector.parameters(), None)
    rows = torch.cat(selected)
    if weight is not None:
        rows = rows.to(weight.dtype)
    projected = model.model.mm_projector(rows).split([len(s) for s in selected])
    out = []
    for (tokens, num_encoded, signals, flops), block in zip(layouts, projected, strict=True):
        newline = tokens.is_newline
        if bool(newline.any()):
            merged = block.new_empty((len(tokens), block.shape[-1]))
            merged[~newline.to(block.device)] = block
            merged[newline.to(block.device)] = model.model.image_newline.to(block.dtype)
            block = merged
        if pruning is not None:
            tokens, block = apply_selection(tokens, block, pruning.select_projected(tokens, block, signals))
            flops += pruning.take_flops()
        out.append(EncodedImage(block, tokens, num_encoded, flops))
    return out


def encode_videos(model, videos: torch.Tensor | list[torch.Tensor], pruning=None) -> list[EncodedImage]:
    """Pixels of each clip ([3, T, H, W], or a batch [N, 3, T, H, W]) -> per clip, its projected visual block:
    the frames one after another, each frame's [CLS] then its patches (Video-LLaVA's 8 x 257 tokens,
    `frames_layout`). A pre-LLM method picks per frame, as on the views of an image (`select_tokens`)."""
    tower = model.model.video_tower
    clips = torch.stack(list(videos)) if not isinstance(videos, torch.Tensor) else videos
    if clips.dim() == 4:
        clips = clips[None]
    if clips.dim() != 5:
        raise ValueError(f"videos must be [3, T, H, W] clips or a batch [N, 3, T, H, W], got {tuple(clips.shape)}")
    if pruning is None:
        features, signals = tower(clips), None  # [N, T, 1 + P, C]
    else:
        features, signals = pruning.tower_outputs(tower, clips)  # signals per clip (e.g. [N, T, P])
    blocks, layouts = [], []
    for feats, clip_signals in zip(features, split_signals(signals, [1] * len(clips)), strict=True):
        clip_signals = _unbatch(clip_signals)
        full = frames_layout(feats.shape[0], tower.num_patches_per_side, cls=True)
        chosen = None if pruning is None else pruning.select_tokens(full, feats, clip_signals)
        tokens, rows = _selected_rows(full, feats, chosen)
        blocks.append(rows)
        layouts.append((tokens, len(full), clip_signals, 0.0 if pruning is None else pruning.take_flops()))
    return _project(model, layouts, blocks, pruning)


def _unbatch(signals):
    """One clip's signals without the leading clip dimension of 1."""
    if signals is None:
        return None
    if isinstance(signals, dict):
        return {key: value[0] for key, value in signals.items()}
    return signals[0]


def _size(image_sizes, i: int):
    if image_sizes is None:
        return None
    size = image_sizes[i]
    return size.tolist() if isinstance(size, torch.Tensor) else size


def splice_image_features(
    input_ids: torch.Tensor | list[torch.Tensor],
    attention_mask: torch.Tensor | None,
    image_features: torch.Tensor | list[torch.Tensor] | None,
    embed_tokens: torch.nn.Module,
    max_length: int | None = None,
    video_features: list[torch.Tensor] | None = None,
) -> MultimodalInputs:
    """Replace every `IMAGE_TOKEN_INDEX` in each sample by the next image's features (and every
    `VIDEO_TOKEN_INDEX` by the next video's whole clip), then left-pad.

    `input_ids` is a padded [B, T] tensor (padding marked False in `attention_mask`) or a list of 1-D tensors.
    Images are consumed in order across the batch; as in LLaVA, a sample without a placeholder still consumes one
    image slot (its features are not inserted) when the batch has images. Videos are consumed in order by their
    placeholders only. `image_indices` number videos after the images (video k is `len(image_features) + k`).
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
    indices: list[list[int]] = []
    image_idx, video_idx = 0, 0
    num_images = 0 if image_features is None else len(image_features)
    for ids in samples:
        placeholder = (ids == IMAGE_TOKEN_INDEX) | (ids == VIDEO_TOKEN_INDEX)
        where = torch.nonzero(placeholder).flatten().tolist()
        if not where:
            sequences.append(embed_tokens(ids))
            spans.append([])
            indices.append([])
            image_idx += 1
            continue
        is_video = (ids[where] == VIDEO_TOKEN_INDEX).tolist()
        if image_features is None and not all(is_video):
            raise ValueError("The prompt has an <image> placeholder but no image was given")
        if video_features is None and any(is_video):
            raise ValueError("The prompt has a <video> placeholder but no video was given")
        bounds = [-1] + where + [len(ids)]
        pieces = [ids[bounds[i] + 1 : bounds[i + 1]] for i in range(len(bounds) - 1)]
        text_embeds = embed_tokens(torch.cat(pieces)).split([len(p) for p in pieces])
        parts, sample_spans, sample_images, length = [], [], [], 0
        for i, text in enumerate(text_embeds):
            parts.append(text)
            length += len(text)
            if i < len(where) and is_video[i]:
                if video_idx >= len(video_features):
                    raise ValueError(f"The batch has more <video> placeholders than videos ({len(video_features)})")
                feature = video_features[video_idx].to(text.dtype)
                sample_images.append(num_images + video_idx)
                video_idx += 1
                parts.append(feature)
                sample_spans.append((length, len(feature)))
                length += len(feature)
            elif i < len(where):
                if image_idx >= num_images:
                    raise ValueError(f"The batch has more <image> placeholders than images ({num_images})")
                feature = image_features[image_idx].to(text.dtype)
                sample_images.append(image_idx)
                image_idx += 1
                parts.append(feature)
                sample_spans.append((length, len(feature)))
                length += len(feature)
        sequences.append(torch.cat(parts))
        spans.append(sample_spans)
        indices.append(sample_images)

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
    lengths = [len(seq) for seq in sequences]
    return MultimodalInputs(embeds, token_mask, position_ids, spans, lengths, has_padding, indices)
