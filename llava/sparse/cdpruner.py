"""CDPruner (NeurIPS 2025): keep the tokens of a conditional DPP over the projected tokens, conditioned on the question.

The reference (Theia-4869/CDPruner @9541616, `llava_arch.py::encode_images`, `clip_encoder.py`) scores each view:
- similarity S = X X^T of the L2-normalised projector outputs (normalised in the model's dtype, then fp32);
- relevance r_i = -mean_m cos(v_i, t_m): v_i = CLIP's `visual_projection(post_layernorm(patch features))` of the
  tower's selected layer, t_m = `CLIPTextModelWithProjection.text_embeds` of the question, tokenised without
  truncation and cut into segments of 77 (zero-padded ids and mask), one embedding per segment. The minus sign is
  the maintainer's (CLIP's patch embeddings anti-correlate with the text); then min-max normalised,
  (r - min + 1e-6) / (max - min);
- kernel L = diag(r) S diag(r), and the fast greedy MAP of the DPP (Chen et al. 2018): T steps, each picking the
  largest residual gain; the kept tokens stay in raster order. Exactly T tokens per view.

The question is the last user message of each prompt, decoded from its ids (`question_text`), without LLaVA's
answer-format suffixes, as the reference's eval scripts pass it. The CLIP text tower, its tokenizer and
`visual_projection` come from the full CLIP checkpoint the vision tower came from (`mm_vision_tower`, e.g.
openai/clip-vit-large-patch14-336; `--cdpruner-clip` to override), loaded once on first use, in float32 as the
reference; `post_layernorm` is the running tower's own. Decoding the prompt needs the LLM's tokenizer: the
checkpoint's (`--model-base` / `--model-path`), `--cdpruner-tokenizer`, or `CDPruner(tokenizer=...)`.

Families: LLaVA-1.5, and LLaVA-NeXT per view in the reference's layout (`mm_patch_merge_type` with `_unpad`
stripped: base view first, then the crop grid as one raster, no unpadding and no newline tokens; T/2,880 of each
view, 640 -> 128 per view). The reference also fixes the anyres grid to 672 x 672 (`select_best_resolution`
overridden); pass `--image-grid-pinpoints '[[672,672]]'` to reproduce that. Qwen-VL (no CLIP text tower) and
Video-LLaVA (LanguageBind towers) are refused.

Differences from the reference:
- normalisation per image (over its views) by default; the reference's min/max spans the whole batch, which couples
  samples (`--cdpruner-batch-norm` for parity; at batch size 1 they agree). Each image is scored against its own
  question (the reference averages over every question of the batch, and its tokenizer call fails on a batch of
  questions of different lengths);
- the DPP's square root is guarded, sqrt(max(gain, 1e-10)): the reference divides by sqrt of a gain that rounding
  can make zero or negative (duplicate tokens, T above the kernel's rank), which turns every gain into NaN and then
  fills the budget with the first tokens in raster order;
- `--cdpruner-theta` applies the reference's commented-out relevance scaling r <- exp(theta / (2 (1 - theta)) r)
  (off by default, as the official LLaVA code; the OpenVINO port uses 0.5).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from torch import nn

from llava.constants import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX
from llava.sparse.budget import Budget
from llava.sparse.engine import PruningMethod, patches_per_view
from llava.sparse.registry import LLAVA_15, LLAVA_NEXT, methods_that_apply, register

# What the reference's eval scripts strip from a question before CLIP reads it (model_vqa_loader, model_vqa_science;
# model_vqa_mmbench never adds its suffixes to the text it passes).
ANSWER_SUFFIXES = (
    "\nAnswer the question using a single word or phrase.",
    "\nAnswer with the option's letter from the given choices directly.",
    "\n请直接回答选项字母。",
)
# (user turn opens, assistant turn opens) of the conversation templates: vicuna_v1 / llava_v1, mistral_instruct,
# chatml_direct and Qwen-VL.
TURN_MARKERS = (("USER:", "ASSISTANT:"), ("[INST]", "[/INST]"), ("<|im_start|>user\n", "<|im_end|>"))
DPP_EPS = 1e-10  # guard of the DPP's square root (see the module docstring)


def question_text(tokenizer, ids: torch.Tensor) -> str:
    """The last user message of a prompt's ids (placeholders and LLaVA's answer-format suffixes removed)."""
    pieces, run = [], []
    for token in ids.tolist():
        if token in (IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX):
            pieces += [tokenizer.decode(run), "<image>"]
            run = []
        elif token >= 0:
            run.append(token)
    text = "".join(pieces + [tokenizer.decode(run)])
    for user, assistant in TURN_MARKERS:
        start = text.rfind(user)
        if start >= 0:
            end = text.find(assistant, start + len(user))
            text = text[start + len(user) : None if end < 0 else end]
            break
    for special in tokenizer.all_special_tokens:
        text = text.replace(special, "")
    text = re.sub(r"<image>\n?", "", text)
    for suffix in ANSWER_SUFFIXES:
        text = text.replace(suffix, "")
    return text.strip()


@dataclasses.dataclass
class ClipText:
    """CLIP's text side and image projection, as the reference loads them beside the vision tower."""

    tokenizer: object
    text_model: nn.Module  # CLIPTextModelWithProjection
    visual_projection: nn.Linear
    segment: int  # tokens per text segment (max_position_embeddings, 77)

    @torch.no_grad()
    def embed(self, question: str) -> torch.Tensor:
        """L2-normalised `text_embeds` [segments, C] of a question: tokenised without truncation, zero-padded to a
        multiple of `segment` and cut into segments (ids and mask), as the reference."""
        device = self.visual_projection.weight.device
        encoded = self.tokenizer(text=[question], return_tensors="pt", verbose=False)
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        segments = (ids.shape[1] - 1) // self.segment + 1
        pad = segments * self.segment - ids.shape[1]
        ids, mask = (
            torch.cat([t, t.new_zeros((1, pad))], dim=1).view(-1, self.segment).to(device) for t in (ids, mask)
        )
        embeds = self.text_model(input_ids=ids, attention_mask=mask).text_embeds.float()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def text_flops(self, segments: int) -> float:
        """2 x parameters x tokens: the text tower's dense work for `segments` segments."""
        params = sum(p.numel() for p in self.text_model.parameters())
        return 2.0 * params * segments * self.segment


def _read_tensors(folder: Path, wanted) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder whose names pass `wanted`, reading no others."""
    from llava.model.checkpoint import weight_files

    out = {}
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                out.update({name: f.get_tensor(name) for name in f.keys() if wanted(name)})
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            out.update({name: tensor for name, tensor in state.items() if wanted(name)})
    return out


def load_clip_text(folder: str | Path, device: torch.device) -> ClipText:
    """CLIP's text tower with projection, its tokenizer and `visual_projection` from a full CLIP checkpoint folder
    (what `CLIPModel.save_pretrained` writes, e.g. openai/clip-vit-large-patch14-336), in float32."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPTextModelWithProjection

    folder = Path(folder)
    config_file = folder / "config.json"
    model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    if model_type != "clip":
        raise ValueError(
            "CDPruner needs a full CLIP checkpoint (vision and text towers, model_type 'clip') for its relevance "
            f"scores; {folder} holds {model_type or 'no config.json'}. Pass --cdpruner-clip with the folder of the "
            "CLIP the vision tower came from (LLaVA-1.5 / NeXT: openai/clip-vit-large-patch14-336)"
        )
    # transformers 5 builds an empty CLIPTokenizer from a folder without vocabulary: look for its files first
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise ValueError(f"No CLIP tokenizer in {folder} (tokenizer.json, or vocab.json and merges.txt)")
    config = CLIPConfig.from_pretrained(str(folder))
    text_config = config.text_config
    text_config.projection_dim = config.projection_dim  # a CLIPModel config may keep it at the top level only
    state = _read_tensors(
        folder,
        lambda name: (
            (name.startswith(("text_model.", "text_projection.", "visual_projection.")))
            and not name.endswith("position_ids")
        ),
    )
    projection = state.pop("visual_projection.weight", None)
    if projection is None or "text_projection.weight" not in state:
        raise ValueError(f"{folder} has no CLIP text tower and projections (a vision-only checkpoint?)")
    with torch.device("meta"):
        text_model = CLIPTextModelWithProjection(text_config)
    text_model.load_state_dict(state, strict=True, assign=True)
    for name, buffer in list(text_model.named_buffers()):  # position ids 0..P-1, not stored
        module_name, _, attr = name.rpartition(".")
        ids = torch.arange(buffer.shape[-1]).expand(buffer.shape)
        text_model.get_submodule(module_name).register_buffer(attr, ids, persistent=False)
    visual_projection = nn.Linear(projection.shape[1], projection.shape[0], bias=False)
    visual_projection.weight = nn.Parameter(projection, requires_grad=False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    text_model = text_model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    visual_projection = visual_projection.to(device=device, dtype=torch.float32).requires_grad_(False)
    return ClipText(tokenizer, text_model, visual_projection, text_config.max_position_embeddings)


def query_relevance(joint: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Raw relevance [..., N] of CLIP joint-space image embeddings [..., N, C] to normalised text embeddings [M, C]:
    minus the mean cosine over the text segments (the reference's sign for CLIP)."""
    joint = joint / joint.norm(dim=-1, keepdim=True)
    return (-(joint @ text.T)).mean(dim=-1)


def dpp_map(kernel: torch.Tensor, count: int) -> torch.Tensor:
    """Fast greedy MAP of DPPs with kernels [B, N, N]: the `count` picks of each, in pick order ([B, count])."""
    batch, n, _ = kernel.shape
    rows = torch.arange(batch, device=kernel.device)
    vectors = kernel.new_zeros((count, batch, n))
    gains = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    picks = torch.empty((count, batch), dtype=torch.long, device=kernel.device)
    for i in range(count):
        j = torch.argmax(gains, dim=-1)
        picks[i] = j
        residual = kernel[rows, j] - torch.einsum("tb,tbn->bn", vectors[:i, rows, j], vectors[:i])
        e = residual / torch.sqrt(gains[rows, j].clamp(min=DPP_EPS)).unsqueeze(-1)  # fixed: guarded sqrt
        vectors[i] = e
        gains -= e.square()
        gains[rows, j] = float("-inf")
    return picks.T


def cdpruner_flops(views: int, n: int, kept: int, dim: int, vision_dim: int, joint_dim: int, segments: int) -> float:
    """Multiply-adds x 2 of one image: CLIP projection, relevance, similarity, kernel and the T greedy steps."""
    per_view = 2.0 * n * vision_dim * joint_dim + 2.0 * n * joint_dim * segments + 2.0 * n * n * dim + 2.0 * n * n
    per_view += kept * (kept - 1) * n + 3.0 * kept * n
    return views * per_view


class CDPruner(PruningMethod):
    """Conditional-DPP selection of each view's projected tokens; see the module docstring."""

    name = "cdpruner"
    grid_rule = "llava"  # the reference is LLaVA's anyres code (with every image pinned to 672 x 672)
    merge_type = "spatial"  # LLaVA-NeXT: the reference strips "_unpad" (base first, crop-grid raster, no newline)

    def __init__(
        self,
        retained_tokens: int | None = 192,
        ratio: float | None = None,
        clip_path: str | None = None,
        tokenizer=None,
        tokenizer_path: str | None = None,
        batch_norm: bool = False,
        theta: float | None = None,
        checkpoint: str | None = None,
    ) -> None:
        if theta is not None and not 0 <= theta < 1:
            raise ValueError(f"--cdpruner-theta {theta} must be in [0, 1)")
        self.budget = Budget(retained_tokens, ratio)
        self.clip_path, self.tokenizer, self.tokenizer_path = clip_path, tokenizer, tokenizer_path
        self.batch_norm, self.theta, self.checkpoint = batch_norm, theta, checkpoint
        self.view_patches: int | None = None
        self.clip: ClipText | None = None
        self._clip_source: str | None = None
        self._samples: list[torch.Tensor] | None = None
        self._image_sample: list[int] = []
        self.questions: dict[int, str] = {}  # sample -> the question CLIP read (last batch)
        self._texts: dict[int, torch.Tensor] = {}
        self._relevance: list[torch.Tensor] = []
        self._cursor = 0

    def describe(self) -> str:
        text = f"cdpruner T={self.budget.describe()}"
        if self.view_patches is not None and self.nominal not in (None, self.view_patches):
            text += f" ({self.view_count(self.view_patches)} per view)"
        if self.batch_norm:
            text += " batch-norm"
        if self.theta is not None:
            text += f" theta={self.theta:g}"
        return text

    def validate(self, model) -> None:
        tower = model.get_vision_tower()
        if not hasattr(tower, "encoder_hidden_states"):
            raise ValueError(
                "cdpruner scores relevance with the CLIP text tower of the model's CLIP vision tower; Qwen-VL has "
                f"no CLIP text tower (the paper's Qwen recipe is unpublished). {methods_that_apply(model)}."
            )
        if getattr(model.model, "video_tower", None) is not None:
            raise ValueError(
                "cdpruner runs on LLaVA-1.5 and LLaVA-NeXT (CLIP towers); Video-LLaVA's LanguageBind towers have no "
                f"CLIP text tower here. {methods_that_apply(model)}."
            )
        self.view_patches = patches_per_view(model)
        tokens = self.budget.tokens
        if tokens is not None and not 0 < tokens <= (self.nominal or tokens):
            raise ValueError(f"cdpruner: --retained-tokens {tokens} must be in 1..{self.nominal}")

    def view_count(self, per_view: int) -> int:
        """Tokens kept of a view of `per_view` tokens: T on LLaVA-1.5, T / nominal of it on anyres views."""
        return self.budget.count(per_view, self.nominal or per_view)

    # -- hooks -------------------------------------------------------------------------------------------------------
    def prepare(self, model, input_ids) -> None:
        """Records the batch's prompts and which sample each image belongs to (images are consumed in order; a
        sample without a placeholder still consumes one, as in LLaVA's splice)."""
        samples = [input_ids] if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1 else list(input_ids)
        self._samples = [ids.cpu() for ids in samples]
        self._image_sample = []
        for b, ids in enumerate(self._samples):
            self._image_sample += [b] * max(1, int((ids == IMAGE_TOKEN_INDEX).sum()))
        self.questions, self._texts = {}, {}
        self._clip_source = self.clip_path or model.config.mm_vision_tower

    @torch.no_grad()
    def tower_outputs(self, tower, pixels):
        """The selected layer's features, and their CLIP joint-space embeddings (fp32) as the views' signals."""
        if self._samples is None:
            raise ValueError("cdpruner reads each prompt's question: call prepare(model, input_ids) before encoding")
        clip = self._load_clip(tower.device)
        selected = tower.feature_select(tower.encoder_hidden_states(pixels))
        clip_model = tower.vision_tower  # transformers' CLIPVisionModel (5.x: no `vision_model` level)
        post_layernorm = getattr(clip_model, "vision_model", clip_model).post_layernorm
        joint = clip.visual_projection(post_layernorm(selected).float())
        self._relevance, self._cursor = [], 0
        return selected.to(pixels.dtype), joint

    @torch.no_grad()
    def select_tokens(self, tokens, features, signals):
        """Keeps every token (selection happens after the projector); scores the image against its question."""
        index = len(self._relevance)
        if index >= len(self._image_sample):
            raise ValueError("cdpruner: the batch has more images than its prompts consume")
        self._relevance.append(query_relevance(signals, self._text(self._image_sample[index])))
        return None

    @torch.no_grad()
    def select_projected(self, tokens, embeddings, signals):
        raw = self._relevance[self._cursor]
        self._cursor += 1
        if bool((tokens.view < 0).any()):
            raise ValueError("cdpruner selects per view and takes no newline or merged tokens (use merge 'spatial')")
        order = torch.argsort(tokens.view, stable=True).view(tokens.num_views, -1)  # each view's tokens in raster
        views, per_view = order.shape
        count = self.view_count(per_view)
        if count >= per_view:
            return None
        pool = torch.cat([r.flatten() for r in self._relevance]) if self.batch_norm else raw
        low, high = pool.min(), pool.max()
        relevance = (raw - low + 1e-6) / (high - low)
        if self.theta is not None:
            relevance = torch.exp(self.theta / (2 * (1 - self.theta)) * relevance)
        device = embeddings.device
        normed = embeddings / embeddings.norm(dim=-1, keepdim=True)  # quirk: normalised in the model's dtype
        x = normed.float()[order.to(device)]  # [views, n, D]
        rows, cols = tokens.view[order], tokens.leading + tokens.patch[order]
        r = relevance[rows.to(relevance.device), cols.to(relevance.device)].to(device)
        kernel = r[:, :, None] * (x @ x.transpose(1, 2)) * r[:, None, :]
        picks = dpp_map(kernel, count).cpu()
        clip = self.clip
        self.record_flops(
            cdpruner_flops(
                views,
                per_view,
                count,
                embeddings.shape[-1],
                clip.visual_projection.in_features,
                clip.visual_projection.out_features,
                len(self._texts[self._image_sample[self._cursor - 1]]),
            )
        )
        return order.gather(1, picks).flatten().sort().values

    # -- text --------------------------------------------------------------------------------------------------------
    def _text(self, sample: int) -> torch.Tensor:
        """Normalised text embeddings [segments, C] of a sample's question (computed once per batch)."""
        if sample not in self._texts:
            question = question_text(self._llm_tokenizer(), self._samples[sample])
            self.questions[sample] = question
            self._texts[sample] = self.clip.embed(question)
            self.record_flops(self.clip.text_flops(len(self._texts[sample])))  # counted with the sample's image
        return self._texts[sample]

    def _llm_tokenizer(self):
        if self.tokenizer is None:
            if self.tokenizer_path is None:
                raise ValueError(
                    "cdpruner decodes each prompt's question with the LLM's tokenizer: pass --cdpruner-tokenizer "
                    "(the CLI defaults to --model-path), or build CDPruner(..., tokenizer=tokenizer)"
                )
            from llava.model.builder import load_tokenizer, locate_model

            self.tokenizer = load_tokenizer(locate_model(self.tokenizer_path))
        return self.tokenizer

    def _load_clip(self, device: torch.device) -> ClipText:
        if self.clip is None:
            from llava.model.builder import locate_vision_tower

            name = self._clip_source
            if not name:
                raise ValueError("cdpruner: the model names no vision tower; pass --cdpruner-clip (a full CLIP folder)")
            # a relative mm_vision_tower is also looked for beside the checkpoint, as the loader does
            model_dir = Path(self.checkpoint) if self.checkpoint and Path(self.checkpoint).is_dir() else None
            source = "--cdpruner-clip" if self.clip_path else "mm_vision_tower"
            self.clip = load_clip_text(locate_vision_tower(name, source, model_dir), device)
        return self.clip


def _add_args(group) -> None:
    group.add_argument(
        "--cdpruner-clip",
        default=None,
        help="CDPruner: full CLIP checkpoint folder or Hub id for the text tower and visual projection (default: "
        "--vision-tower, else the model's mm_vision_tower)",
    )
    group.add_argument(
        "--cdpruner-tokenizer",
        default=None,
        help="CDPruner: LLM tokenizer folder used to decode the question (default: --model-base, else --model-path)",
    )
    group.add_argument(
        "--cdpruner-batch-norm",
        action="store_true",
        help="CDPruner: min-max normalise the relevance over the whole batch, as the reference (default: per image)",
    )
    group.add_argument(
        "--cdpruner-theta",
        type=float,
        default=None,
        help="CDPruner: relevance scaling r <- exp(theta / (2 (1 - theta)) r), commented out in the reference "
        "(default: off; the OpenVINO port uses 0.5)",
    )


@register(
    "cdpruner",
    add_args=_add_args,
    help="CDPruner: conditional DPP on the projected tokens, relevance from CLIP's text tower (T per view)",
    families=(LLAVA_15, LLAVA_NEXT),
)
def _build(args, budget) -> CDPruner:
    model_path = getattr(args, "model_path", None)
    return CDPruner(
        budget.count if budget.ratio is None else None,
        budget.ratio,
        clip_path=getattr(args, "cdpruner_clip", None) or getattr(args, "vision_tower", None),
        tokenizer_path=getattr(args, "cdpruner_tokenizer", None) or getattr(args, "model_base", None) or model_path,
        batch_norm=getattr(args, "cdpruner_batch_norm", False),
        theta=getattr(args, "cdpruner_theta", None),
        checkpoint=model_path,
    )
