"""Is pruning as fast as its FLOPs say? Decoder-prefill latency of every method against its FLOPs, side by side.

    python -m llava.bench --shape cpu                   # LLaVA-7B's 32 layers at hidden 1024 (CPU-sized)
    python -m llava.bench --shape llava-v1.5-7b --dtype float16 --attn sdpa flash_attention_2   # on a GPU
    python -m llava.bench --shape cpu-next              # the same widths as a LLaVA-NeXT checkpoint, 2,928 tokens
    python -m llava.bench --shape llava-v1.6-7b --dtype float16 --attn sdpa flash_attention_2   # NeXT-7B, on a GPU
    python -m llava.bench --shape cpu --methods none sparsevlm-2_0-64 --new-tokens 16 --compile   # decode paths
    python -m llava.bench --smoke                       # seconds: tiny shape, every row and column
    python -m llava.bench --shape cpu-next --smoke      # the same for the tiny NeXT shape
    python -m llava.bench --shape cpu-qwen              # Qwen2.5-VL widths at CPU size, 1,296 visual tokens
    python -m llava.bench --shape qwen2.5-vl-7b --dtype bfloat16 --attn sdpa   # Qwen2.5-VL-7B, on a GPU
    python -m llava.bench --shape cpu-video             # Video-LLaVA widths at CPU size, an 8-frame clip, 2,056 tokens
    python -m llava.bench --shape video-llava-7b --dtype float16 --attn sdpa   # Video-LLaVA-7B, on a GPU
    python -m llava.bench --shape cpu-video --smoke     # the same for the tiny Video-LLaVA shape

Random-weight models of the named shape are written in the real checkpoint format and loaded through
`load_pretrained_model`; random weights give true timings because every budget here fixes the token counts. The
same LLaVA-1.5 prompt (vicuna_v1 system prompt, 576 visual tokens, a short question) runs unpruned and with
SparseVLM v1.5 / v2.0, FastV (K=2), FasterVLM and random pruning at 192 / 128 / 64 tokens. Runs are interleaved in
one process (warm-up, then `--repeats` rounds over all rows), and medians are compared, so a noisy machine does not
bias the ratios.

NeXT shapes (`llava-v1.6-7b`, `cpu-next`, `tiny-next`: the same widths, written as an original-format LLaVA-NeXT
checkpoint with anyres, `spatial_unpad`, the tower and `image_newline` inside) run the same code on a 672x672 image:
LLaVA-1.6's largest grid (2x2 crops), 2,928 visual tokens unpruned (five views of 576 = the papers' nominal 2,880
patches, nothing unpadded for a square image, plus 48 newline tokens), prompted and merged as LLaVA does
(`process_images` with the model's config, `image_sizes`). Budgets there are totals against the nominal 2,880
(`llava.sparse.budget`; newline tokens come on top): 640 / 320 / 240, not the papers' 160, which SparseVLM cannot
reach: it prunes after layer 2, so layers 0-1 alone average 2 x 2,880 / 32 = 180 equal tokens, and its lowest
totals are 200 (v1.5, keeping 1 token per view at layer 2) and 185 (v2.0). 240 is 48 per view.

Per row: equal tokens, decoder FLOPs ratio to unpruned (the ideal), measured decoder-prefill latency ratio,
overhead = measured / ideal - 1, time to first token (vision tower included), decode ms per token (from the host
arrival times of the generated tokens; with `--compile`, also through `torch.compile`, CUDA graphs on a GPU),
KV-cache MB, peak memory (CUDA max allocated, or peak RSS growth on CPU), and answers per second at each `--batches`
size (1 and 8). The `transformers` row is transformers' own `LlavaForConditionalGeneration.generate` (NeXT shapes:
`LlavaNextForConditionalGeneration`) on the llava-hf copy of the same weights, unpruned, timed in the same rounds
the same way (decoder prefill by hooks around its language model). With several `--attn`, the first one's table
has the transformers row and the compiled decoding, and the results compare each method's kept visual tokens across
the implementations on the same inputs. `--methods` picks rows (`none` always runs). Results:
`<out>/<shape>-<dtype>.json`, `.md` and `.png`, written after each table. `scripts/bench/gpu.sh` is the GPU run.

Qwen shapes (`qwen2.5-vl-7b`, `cpu-qwen`, `tiny-qwen`) are Qwen2.5-VL checkpoints in the Hub's format (grouped-query
attention, M-RoPE, the windowed ViT and its 2x2 merger) given a 1008x1008 image: 36 x 36 = 1,296 visual tokens with
the checkpoint's pixel bounds, prompted with the model's chat template. Budgets are 432 / 288 / 144 tokens, a third,
two ninths and a ninth of the image (the papers' 33.3 / 22.2 / 11.1 %, what 192 / 128 / 64 are of LLaVA's 576);
FasterVLM has no [CLS] there and is left out. The `transformers` row is `Qwen2_5_VLForConditionalGeneration` on the
same folder (both apply the checkpoint's repetition penalty).

Video shapes (`video-llava-7b`, `cpu-video`, `tiny-video`) are original-format Video-LLaVA checkpoints (Vicuna
decoder; LanguageBind image and video towers beside them, CLIP-L/14 widths at 224 px, temporal attention in every
video-tower layer) given one synthetic 8-frame clip (320x240 frames: a coloured background and a moving square, through
the model's video processor), prompted as `<video>\n` + question with llava_v1: 8 x 257 = 2,056 visual tokens, each
frame's [CLS] and patches. Budgets are totals of the 2,056: 686 / 457 / 228, a third, two ninths and a ninth (the
shares 192 / 128 / 64 are of 576; SparseVLM's schedules cannot reach less per 576-token share). FasterVLM and random
share the budget equally over the frames (85 / 57 / 28 patches of each, [CLS] dropped); `sparsevlm-video` is
SparseVLM's video branch as the reference runs it (rank-adaptive at layer 1, no budget). The `transformers` row is
`VideoLlavaForConditionalGeneration` on the -hf conversion of the same checkpoint (`convert_video_llava_to_hf`), whose
video tower has no temporal attention (the converter drops it): its tower work is smaller than ours, its decoder work
the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

SHAPES = {
    # name: (llm hidden, layers, heads, kv heads, mlp, vocab, vision hidden, vision layers, vision heads, vision mlp)
    "llava-v1.5-7b": (4096, 32, 32, 32, 11008, 32000, 1024, 24, 16, 4096),
    "llava-v1.5-13b": (5120, 40, 40, 40, 13824, 32000, 1024, 24, 16, 4096),
    "cpu": (1024, 32, 8, 8, 2752, 32000, 256, 24, 4, 1024),
    "tiny": (64, 32, 4, 4, 172, 512, 32, 3, 4, 128),
    # LLaVA-NeXT (anyres) checkpoints of the same widths: Vicuna-7B + CLIP-L/336, and the CPU / tiny sizes
    "llava-v1.6-7b": (4096, 32, 32, 32, 11008, 32000, 1024, 24, 16, 4096),
    "cpu-next": (1024, 32, 8, 8, 2752, 32000, 256, 24, 4, 1024),
    "tiny-next": (64, 32, 4, 4, 172, 512, 32, 3, 4, 128),
    # Qwen2.5-VL checkpoints: the 7B's widths (GQA, 4 kv heads of 128), a CPU size with its head sizes, and tiny
    "qwen2.5-vl-7b": (3584, 28, 28, 4, 18944, 152064, 1280, 32, 16, 3420),
    "cpu-qwen": (1024, 28, 8, 2, 2752, 32000, 256, 8, 4, 512),
    "tiny-qwen": (64, 28, 4, 2, 172, 576, 32, 4, 4, 64),
    # Video-LLaVA checkpoints: Vicuna-7B + LanguageBind towers (CLIP-L/14 at 224 px, temporal attention in the video
    # tower), and the CPU / tiny sizes of the LLaVA shapes; the towers' MLPs are 4 x their width (LanguageBind's)
    "video-llava-7b": (4096, 32, 32, 32, 11008, 32000, 1024, 24, 16, 4096),
    "cpu-video": (1024, 32, 8, 8, 2752, 32000, 256, 24, 4, 1024),
    "tiny-video": (64, 32, 4, 4, 172, 512, 32, 3, 4, 128),
}
NEXT_SHAPES = frozenset({"llava-v1.6-7b", "cpu-next", "tiny-next"})
QWEN_SHAPES = frozenset({"qwen2.5-vl-7b", "cpu-qwen", "tiny-qwen"})
VIDEO_SHAPES = frozenset({"video-llava-7b", "cpu-video", "tiny-video"})
BUDGETS = (192, 128, 64)  # LLaVA-1.5: of 576 visual tokens
# LLaVA-NeXT: totals against the nominal 2,880 (five views of 576), scaled to the image's own count: the papers'
# 640 / 320, and 240 (48 per view) for their 160, which SparseVLM cannot reach (see the module docstring).
NEXT_BUDGETS = (640, 320, 240)
IMAGE_SIZE = (320, 240)  # LLaVA-1.5 pads it to a square: 576 tokens whatever its size
NEXT_IMAGE_SIZE = (672, 672)  # LLaVA-1.6's largest 2x2 grid: 576 + 48 x (48 + 1 newline) = 2,928 tokens
QWEN_BUDGETS = (432, 288, 144)  # Qwen2.5-VL: of 1,296 visual tokens, the shares 192 / 128 / 64 are of 576
QWEN_IMAGE_SIZE = (1008, 1008)  # a multiple of 28 on both sides: 36 x 36 merged tokens, no resizing
# Video-LLaVA: totals of the clip's 2,056 tokens (8 frames x 257), the shares 192 / 128 / 64 are of 576
VIDEO_BUDGETS = (686, 457, 228)
VIDEO_FRAMES = 8  # Video-LLaVA's clip: 8 frames, each scaled and centre-cropped to 224 px by its video processor
VIDEO_FRAME_SIZE = (320, 240)
QUESTION = "What is the color of the bus in the image?\nAnswer the question using a single word or phrase."
VIDEO_QUESTION = "What is the color of the square in the video?\nAnswer the question using a single word or phrase."


def is_next(shape: str) -> bool:
    return shape in NEXT_SHAPES


def is_qwen(shape: str) -> bool:
    return shape in QWEN_SHAPES


def is_video(shape: str) -> bool:
    return shape in VIDEO_SHAPES


def tiny_shape(shape: str) -> str:
    """The tiny shape of `shape`'s kind (`--smoke`)."""
    if is_next(shape):
        return "tiny-next"
    if is_qwen(shape):
        return "tiny-qwen"
    return "tiny-video" if is_video(shape) else "tiny"


def budgets_for(shape: str) -> tuple[int, ...]:
    if is_video(shape):
        return VIDEO_BUDGETS
    return NEXT_BUDGETS if is_next(shape) else QWEN_BUDGETS if is_qwen(shape) else BUDGETS


def image_size_for(shape: str) -> tuple[int, int]:
    """The image's size, or for video shapes each frame's (before the video processor's resize and crop)."""
    if is_video(shape):
        return VIDEO_FRAME_SIZE
    return NEXT_IMAGE_SIZE if is_next(shape) else QWEN_IMAGE_SIZE if is_qwen(shape) else IMAGE_SIZE


def methods_for(shape: str) -> list[tuple[str, object]]:
    """The rows of a shape: Qwen-VL has no [CLS], so no FasterVLM; video shapes add SparseVLM's video branch (the
    reference's: rank-adaptive at layer 1, no budget)."""
    from llava.sparse.sparsevlm import SparseVLM

    rows = methods(budgets_for(shape))
    if is_video(shape):
        rows.append(("sparsevlm-video", SparseVLM("video")))
    return [(name, m) for name, m in rows if not (is_qwen(shape) and m.needs_cls_attention)]


def methods(budgets: tuple[int, ...] = BUDGETS) -> list[tuple[str, object]]:
    from llava.sparse.engine import PruningMethod
    from llava.sparse.fastv import FastV
    from llava.sparse.pre_llm import FasterVLM, RandomPruning
    from llava.sparse.sparsevlm import SparseVLM

    rows = [("none", PruningMethod())]
    for budget in budgets:
        rows += [
            (f"sparsevlm-1_0-{budget}", SparseVLM("1_0", budget)),
            (f"sparsevlm-2_0-{budget}", SparseVLM("2_0", budget)),
            (f"fastv-{budget}", FastV(k=2, retained_tokens=budget)),
            (f"fastervlm-{budget}", FasterVLM(budget)),
            (f"random-{budget}", RandomPruning(budget)),
        ]
    return rows


def checkpoint_folder(shape: str, workdir: Path) -> Path:
    """Where `write_checkpoint(shape, workdir, ...)` puts the checkpoint (reused when present)."""
    folder = workdir / f"bench-{shape}"
    return folder / "Video-LLaVA-tiny" if is_video(shape) else folder


def write_checkpoint(shape: str, folder: Path, dtype: torch.dtype) -> Path:
    from llava.testing.checkpoints import write_tiny_clip, write_tiny_llava

    hidden, layers, heads, kv, mlp, vocab, v_hidden, v_layers, v_heads, v_mlp = SHAPES[shape]
    if is_video(shape):
        from llava.testing.video_llava import write_tiny_video_llava

        if v_mlp != 4 * v_hidden:
            raise ValueError(f"{shape}: LanguageBind towers have MLPs 4 x their width, not {v_mlp} for {v_hidden}")
        return write_tiny_video_llava(
            folder / f"bench-{shape}",
            image_size=224,
            num_frames=VIDEO_FRAMES,
            tower_hidden=v_hidden,
            tower_layers=v_layers,
            tower_heads=v_heads,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv,
            intermediate_size=mlp,
            vocab_size=vocab,
            dtype=dtype,
        )
    if is_qwen(shape):
        from llava.testing.qwen_checkpoints import write_tiny_qwen_vl

        return write_tiny_qwen_vl(
            folder / f"bench-{shape}",
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv,
            intermediate_size=mlp,
            vocab_size=vocab,
            vision_hidden=v_hidden,
            vision_depth=v_layers,
            vision_heads=v_heads,
            vision_intermediate=v_mlp,
            num_shards=4,
            dtype=dtype,
        )
    clip = write_tiny_clip(
        folder / "clip",
        hidden_size=v_hidden,
        num_layers=v_layers,
        num_heads=v_heads,
        intermediate_size=v_mlp,
        dtype=dtype,
    )
    return write_tiny_llava(
        folder / f"bench-{shape}",
        clip,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=mlp,
        vocab_size=vocab,
        num_kv_heads=kv,
        num_shards=4,
        dtype=dtype,
        next=is_next(shape),
    )


class PeakMemory:
    """Peak memory of a region: CUDA max allocated, or on CPU the peak growth of resident memory (sampled)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.0005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


@dataclasses.dataclass
class Sample:
    prefill_ms: float
    ttft_ms: float
    decode_ms_per_token: float
    peak_mb: float


class TokenClock:
    """A `generate` streamer that timestamps the prompt and each new token as it reaches the host: time to first
    token and decode time per token, measured the same way for our `generate` and transformers'."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.times: list[float] = []

    def put(self, value) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    @property
    def ttft_ms(self) -> float:
        return (self.times[1] - self.times[0]) * 1e3

    @property
    def decode_ms_per_token(self) -> float:
        steps = len(self.times) - 2
        return (self.times[-1] - self.times[1]) * 1e3 / max(steps, 1)


def visual_input(media, model, processor, dtype: torch.dtype) -> dict:
    """`generate`'s keyword arguments for the benchmark's visual input, processed as the model's config asks for it
    now (outside the timed region): an image's `images` and `image_sizes`, or a clip's frames (uint8 [T, H, W, 3])
    through the model's video processor as `videos`."""
    from llava.mm_utils import process_images, to_device

    if isinstance(media, np.ndarray):
        return {"videos": [model.video_processor.preprocess(media).to(model.device, dtype)]}
    pixels = to_device(process_images([media], processor, model.config), model.device, dtype)
    return {"images": pixels, "image_sizes": [media.size]}


def batched(visual: dict, batch: int) -> dict:
    """`batch` identical requests: every list (Qwen-VL's [patches, 1176] tensor per image, image sizes, clips)
    repeated, every tensor ([B, 3, H, W], NeXT's [B, views, 3, H, W]) expanded along its first dimension."""
    return {k: v * batch if isinstance(v, list) else v.expand(batch, *v.shape[1:]) for k, v in visual.items()}


def measure(model, ids, visual: dict, new_tokens: int) -> tuple[Sample, object]:
    """One `generate` of exactly `new_tokens` tokens: decoder-prefill time, time to first token (vision tower
    included), decode time per token, peak memory."""
    clock = TokenClock(model.device)
    with PeakMemory(model.device) as memory:
        model.generate(ids, **visual, max_new_tokens=new_tokens, eos_token_id=-1, streamer=clock)
    account = model.last_accounts[0]
    return Sample(account.prefill_ms, clock.ttft_ms, clock.decode_ms_per_token, memory.mb), account


def throughput(model, ids, visual: dict, batch: int, new_tokens: int) -> float:
    """Answers per second generating `new_tokens` tokens for a batch of identical requests."""
    from llava.sparse.accounting import Timer

    with Timer(model.device) as t:
        model.generate([ids[0]] * batch, **batched(visual, batch), max_new_tokens=new_tokens, eos_token_id=-1)
    return batch / (t.ms / 1e3)


class TransformersReference:
    """transformers' own `LlavaForConditionalGeneration` (`LlavaNext...` for NeXT shapes) on the llava-hf copy of
    the same random weights (`Qwen2_5_VL...` on the same folder for Qwen shapes, `VideoLlava...` on the -hf
    conversion for video shapes), unpruned: the `transformers` row, timed like ours (`TokenClock`; decoder prefill
    by hooks around its language model's first call)."""

    def __init__(self, original: Path, dtype: torch.dtype, attn: str, device: torch.device) -> None:
        import transformers

        from llava.testing import convert_to_llava_hf
        from llava.testing.checkpoints import _default_dtype
        from llava.testing.video_llava import convert_video_llava_to_hf

        folder = original
        config = json.loads((original / "config.json").read_text())
        if config["model_type"] == "llava":
            folder = original.parent / f"{original.name}-hf"
            convert = convert_video_llava_to_hf if config.get("mm_video_tower") else convert_to_llava_hf
            if not (folder / "config.json").is_file():
                with _default_dtype(dtype):  # the Video-LLaVA converter builds its model in the default dtype
                    convert(original, folder)
        architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
        model_class = getattr(transformers, architecture)
        self.model = model_class.from_pretrained(str(folder), dtype=dtype, attn_implementation=attn).to(device).eval()
        self.device = device
        self.next = architecture.startswith("LlavaNext")
        self.qwen = architecture.startswith("Qwen")
        self.video = architecture.startswith("VideoLlava")
        self._prefill_ms: float | None = None
        language_model = self.model.model.language_model
        language_model.register_forward_pre_hook(self._start)
        language_model.register_forward_hook(self._stop)

    def _start(self, module, args) -> None:
        if self._prefill_ms is None:
            from llava.sparse.accounting import Timer

            self._timer = Timer(self.device).__enter__()

    def _stop(self, module, args, output) -> None:
        if self._prefill_ms is None:
            self._timer.__exit__(None, None, None)
            self._prefill_ms = self._timer.ms

    def inputs(self, ids: torch.Tensor, visual: dict, visual_tokens: int, batch: int, grid=None) -> dict:
        """transformers' input layout for our prompt and `generate` arguments (`visual_input`): the image or video
        placeholder expanded to its visual tokens, the pixels of `batch` identical requests (a clip as
        `pixel_values_videos` [B, T, 3, H, W]; Qwen: the patches of every image concatenated, their
        `image_grid_thw` and token types)."""
        from llava.constants import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX

        config = self.model.config
        if self.video:
            placeholder, token = VIDEO_TOKEN_INDEX, config.video_token_index
        else:
            placeholder, token = IMAGE_TOKEN_INDEX, config.image_token_id if self.qwen else config.image_token_index
        ids = ids[0]
        at = int((ids == placeholder).nonzero()[0, 0])
        block = torch.full((visual_tokens,), token, device=ids.device)
        hf_ids = torch.cat([ids[:at], block, ids[at + 1 :]])[None].expand(batch, -1).to(self.device)
        if self.qwen:
            return {
                "input_ids": hf_ids,
                "pixel_values": visual["images"][0].repeat(batch, 1),
                "image_grid_thw": grid.repeat(batch, 1).to(self.device),
                "mm_token_type_ids": (hf_ids == token).long(),
            }
        if self.video:  # our clip is [3, T, H, W]
            pixels = {"pixel_values_videos": visual["videos"][0].permute(1, 0, 2, 3)[None]}
        else:
            pixels = {"pixel_values": visual["images"]}
        out = {"input_ids": hf_ids, **batched(pixels, batch)}
        if self.next:
            width, height = visual["image_sizes"][0]
            out["image_sizes"] = torch.tensor([[height, width]] * batch, device=self.device)
        return out

    @torch.inference_mode()
    def generate(self, inputs: dict, new_tokens: int, streamer=None) -> None:
        self.model.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=streamer
        )

    def measure(self, inputs: dict, new_tokens: int) -> Sample:
        clock = TokenClock(self.device)
        self._prefill_ms = None
        with PeakMemory(self.device) as memory:
            self.generate(inputs, new_tokens, clock)
        return Sample(self._prefill_ms, clock.ttft_ms, clock.decode_ms_per_token, memory.mb)

    def throughput(self, inputs: dict, new_tokens: int) -> float:
        from llava.sparse.accounting import Timer

        self._prefill_ms = None
        with Timer(self.device) as t:
            self.generate(inputs, new_tokens)
        return inputs["input_ids"].shape[0] / (t.ms / 1e3)


def run(args, save=lambda results: None) -> dict:
    from llava.conversation import get_conv_template
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model
    from llava.testing.images import random_image
    from llava.testing.videos import synthetic_frames

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="llava-bench-"))
    model_dir = checkpoint_folder(args.shape, workdir)
    if not (model_dir / "config.json").is_file():
        model_dir = write_checkpoint(args.shape, workdir, dtype)
    video = is_video(args.shape)
    size = image_size_for(args.shape)
    # the visual input: a random image, or a synthetic clip's frames (a coloured background and a moving square)
    media = synthetic_frames(VIDEO_FRAMES, *size) if video else random_image(0, size)
    results = {
        "shape": args.shape,
        "dims": SHAPES[args.shape],
        "next": is_next(args.shape),
        "qwen": is_qwen(args.shape),
        "video": video,
        "frames": VIDEO_FRAMES if video else None,
        "image_size": list(size),
        "budgets": list(budgets_for(args.shape)),
        "batches": list(args.batches),
        "dtype": args.dtype,
        "device": _device_name(args),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "tables": {},
    }
    kept: dict[str, dict[str, dict]] = {}
    for attn in args.attn:
        tokenizer, model, processor, _ = load_pretrained_model(
            str(model_dir),
            device=args.device,
            device_map=None,  # one device: the timings are per GPU
            dtype=dtype,
            vision_dtype=dtype,
            attn_implementation=attn,
            pruning=None,
        )
        template = "llava_v1" if video else model.config.conv_mode if is_qwen(args.shape) else "vicuna_v1"
        placeholder, question = ("<video>", VIDEO_QUESTION) if video else ("<image>", QUESTION)
        conv = get_conv_template(template)
        conv.append_message(conv.roles[0], f"{placeholder}\n{question}")
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None].to(model.device)
        rows = [(name, m) for name, m in methods_for(args.shape) if name in args.methods or name == "none"]
        # The visual input as the model's config asks for it once the method is set (on NeXT, FasterVLM's
        # reference mode brings its own grid rule); processed outside the timed region.
        visual = {}
        for name, method in rows:
            model.set_pruning(method)
            visual[name] = visual_input(media, model, processor, dtype)
        first = attn == args.attn[0]  # the transformers row and compiled decoding: the first --attn's table only
        reference = None
        if args.transformers and first:
            model.set_pruning(None)
            unpruned = model.prefill(ids, use_cache=False, **visual["none"]).accounts[0]
            reference = TransformersReference(model_dir, dtype, attn, model.device)
            grid = processor(images=[media], return_tensors="pt")["image_grid_thw"] if reference.qwen else None
            ref_inputs = {
                b: reference.inputs(ids, visual["none"], unpruned.num_visual, b, grid) for b in {1, *args.batches}
            }
        samples: dict[str, list[Sample]] = {name: [] for name, _ in rows}
        samples["transformers"] = []
        accounts = {}
        for round_ in range(args.warmup + args.repeats):
            for name, method in rows:
                model.set_pruning(method)
                sample, account = measure(model, ids, visual[name], args.new_tokens)
                if round_ >= args.warmup:
                    samples[name].append(sample)
                    accounts[name] = account
            if reference is not None:
                sample = reference.measure(ref_inputs[1], args.new_tokens)
                if round_ >= args.warmup:
                    samples["transformers"].append(sample)
        compiled = {}
        if args.compile and first:  # after the eager rounds: each row's kept-token schedule compiles (or records) once
            model.compile_decode()
            for name, method in rows:
                model.set_pruning(method)
                runs = [measure(model, ids, visual[name], args.new_tokens)[0] for _ in range(1 + args.repeats)]
                compiled[name] = statistics.median(s.decode_ms_per_token for s in runs[1:])
            model.compile_decode(None)
        tput = {}
        for name, method in rows:
            model.set_pruning(method)
            tput[name] = {
                b: statistics.median(
                    throughput(model, ids, visual[name], b, args.new_tokens) for _ in range(max(1, args.repeats // 5))
                )
                for b in args.batches
            }
        if reference is not None:
            tput["transformers"] = {
                b: statistics.median(
                    reference.throughput(ref_inputs[b], args.new_tokens) for _ in range(max(1, args.repeats // 5))
                )
                for b in args.batches
            }
        model.set_pruning(None)
        base = accounts["none"]
        base_prefill = statistics.median(s.prefill_ms for s in samples["none"])
        table = []
        for name, _ in rows:
            account, runs = accounts[name], samples[name]
            ideal = account.decoder_flops / base.decoder_flops
            measured = statistics.median(s.prefill_ms for s in runs) / base_prefill
            table.append(
                {
                    "method": name,
                    "equal_tokens": round(account.equal_tokens(), 2),
                    "visual_tokens": account.visual_schedule(),
                    "tflops": account.decoder_flops * 1e-12,
                    "flops_ratio": ideal,
                    "prefill_ms": statistics.median(s.prefill_ms for s in runs),
                    "method_ms": account.method_ms,
                    "method_share": None if account.method_ms is None else account.method_ms / account.prefill_ms,
                    "latency_ratio": measured,
                    "overhead": measured / ideal - 1,
                    "ttft_ms": statistics.median(s.ttft_ms for s in runs),
                    "decode_ms_per_token": statistics.median(s.decode_ms_per_token for s in runs),
                    "decode_ms_per_token_compiled": compiled.get(name),
                    "kv_cache_mb": account.kv_cache_bytes / 2**20,
                    "peak_mb": statistics.median(s.peak_mb for s in runs),
                    **{f"answers_per_s_b{b}": tput[name][b] for b in args.batches},
                }
            )
        if reference is not None:  # unpruned, the same prompt and pixels; its KV cache holds what ours does
            runs = samples["transformers"]
            measured = statistics.median(s.prefill_ms for s in runs) / base_prefill
            table.append(
                {
                    **table[0],
                    "method": "transformers",
                    "prefill_ms": statistics.median(s.prefill_ms for s in runs),
                    "method_ms": None,
                    "method_share": None,
                    "latency_ratio": measured,
                    "overhead": measured - 1,
                    "ttft_ms": statistics.median(s.ttft_ms for s in runs),
                    "decode_ms_per_token": statistics.median(s.decode_ms_per_token for s in runs),
                    "decode_ms_per_token_compiled": None,
                    "peak_mb": statistics.median(s.peak_mb for s in runs),
                    **{f"answers_per_s_b{b}": tput["transformers"][b] for b in args.batches},
                }
            )
            del reference
        results["tables"][attn] = table
        kept[attn] = {name: account.kept for name, account in accounts.items()}
        if len(kept) > 1:
            results["kept_agreement"] = kept_agreement(kept)
        save(results)
        del model
    return results


def kept_agreement(kept: dict[str, dict[str, dict]]) -> dict[str, float]:
    """Per method, the share of the first attention implementation's kept visual tokens that every other one kept
    too (same inputs; scores computed by different kernels may tie-break differently), over its pruning layers."""
    first, *others = kept
    agreement = {}
    for name, layers in kept[first].items():
        shares = []
        for layer, indices in layers.items():
            ours = set(indices.flatten().tolist())
            for other in others:
                theirs = set(kept[other][name][layer].flatten().tolist())
                shares.append(len(ours & theirs) / max(len(ours), 1))
        if shares:
            agreement[name] = min(shares)
    return agreement


def _device_name(args) -> str:
    if args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0)
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def markdown(results: dict) -> str:
    w, h = results.get("image_size", IMAGE_SIZE)
    family, media = "LLaVA-1.5 checkpoint", f"{w}x{h} image"
    budgets = ", ".join(map(str, results.get("budgets", BUDGETS)))
    if results.get("next"):
        family = "LLaVA-NeXT checkpoint (anyres, spatial_unpad)"
    elif results.get("qwen"):
        family = "Qwen2.5-VL checkpoint (Hub format, GQA, M-RoPE)"
    elif results.get("video"):
        family = "Video-LLaVA checkpoint (LanguageBind towers, temporal attention)"
        frames, tokens = results["frames"], next(iter(results["tables"].values()))[0]["visual_tokens"][0]
        media = f"one {frames}-frame clip of {w}x{h} frames ({frames} x {tokens // frames} = {tokens:,} visual tokens)"
        budgets += f" (totals of the clip's {tokens:,})"
    out = [
        f"Shape `{results['shape']}` {tuple(results['dims'])}, {family}, {media}, budgets {budgets}, "
        f"{results['dtype']}, {results['device']}, torch {results['torch']}, {results['threads']} threads, "
        f"median of {results['repeats']} interleaved runs.",
        "",
    ]
    if results.get("video") and any(r["method"] == "transformers" for t in results["tables"].values() for r in t):
        out += [
            "The `transformers` row is `VideoLlavaForConditionalGeneration` on the -hf conversion, whose video tower "
            "has no temporal attention (the converter drops it): its tower work, in TTFT, is smaller than ours; the "
            "decoder work is the same.",
            "",
        ]
    if "command" in results:
        out += [f"`{results['command']}`", ""]
    batches = results.get("batches", [1, 8])
    for attn, table in results["tables"].items():
        compiled = any(r.get("decode_ms_per_token_compiled") is not None for r in table)
        out += [
            f"**{attn}**",
            "",
            "| method | equal tokens | FLOPs ratio (ideal) | prefill ms | latency ratio | overhead | method ms "
            "| TTFT ms | decode ms/token |"
            + (" compiled decode ms/token |" if compiled else "")
            + " KV MB | peak MB |"
            + "".join(f" answers/s b{b} |" for b in batches),
            "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * (len(batches) + compiled),
        ]
        for r in table:
            out.append(
                f"| {r['method']} | {r['equal_tokens']:.2f} | {r['flops_ratio']:.3f} | {r['prefill_ms']:.1f} | "
                f"{r['latency_ratio']:.3f} | {100 * r['overhead']:+.1f}% | {_fmt_ms(r['method_ms'])} | "
                f"{r['ttft_ms']:.1f} | {r['decode_ms_per_token']:.2f} |"
                + (f" {_fmt_ms(r.get('decode_ms_per_token_compiled'), 2)} |" if compiled else "")
                + f" {r['kv_cache_mb']:.1f} | {r['peak_mb']:.0f} |"
                + "".join(f" {r[f'answers_per_s_b{b}']:.2f} |" for b in batches)
            )
        out.append("")
    if results.get("kept_agreement"):
        first, *others = results["tables"]
        out += [
            f"Kept visual tokens, {first} vs {', '.join(others)} on the same inputs (least share over pruning "
            "layers): " + ", ".join(f"{name} {share:.3f}" for name, share in results["kept_agreement"].items()),
            "",
        ]
    return "\n".join(out)


def _fmt_ms(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["tables"]), figsize=(6 * len(results["tables"]), 5), squeeze=False)
    for ax, (attn, table) in zip(axes[0], results["tables"].items(), strict=True):
        for r in table:
            ax.scatter(r["flops_ratio"], r["latency_ratio"], s=25)
            ax.annotate(r["method"], (r["flops_ratio"], r["latency_ratio"]), fontsize=6)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="latency = FLOPs (ideal)")
        ax.set_xlabel("decoder FLOPs ratio to unpruned")
        ax.set_ylabel("measured decoder-prefill latency ratio")
        ax.set_title(f"{results['shape']} {results['dtype']} {attn}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attn", nargs="+", default=["sdpa"], choices=["eager", "sdpa", "flash_attention_2"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument(
        "--batches", type=int, nargs="*", default=[1, 8], help="batch sizes for answers/s (none: skip throughput)"
    )
    parser.add_argument(
        "--methods", nargs="+", default=None, help="rows to run (default all; 'none' always runs, as the baseline)"
    )
    parser.add_argument(
        "--no-transformers",
        dest="transformers",
        action="store_false",
        help="skip the row of transformers' own generate on the llava-hf copy of the weights (first --attn only)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time decoding through torch.compile (CUDA graphs on a GPU), for the first --attn",
    )
    parser.add_argument("--tag", default=None, help="suffix of the result files' names (<shape>-<dtype>-<tag>)")
    parser.add_argument("--workdir", default=None, help="keep the random checkpoint here (reused when present)")
    parser.add_argument("--out", type=Path, default=Path("assets/bench"))
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shape of --shape's kind, one run: checks the benchmark itself"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape = tiny_shape(args.shape)
        args.repeats, args.warmup, args.new_tokens = 1, 0, 2
    names = [name for name, _ in methods_for(args.shape)]
    unknown = sorted(set(args.methods or ()) - set(names))
    if unknown:
        parser.error(f"unknown --methods {unknown} for shape {args.shape}; choose from {names}")
    args.methods = args.methods or names
    command = shlex.join(["python", "-m", "llava.bench", *(sys.argv[1:] if argv is None else argv)])
    stem = args.out / "-".join(filter(None, [args.shape, args.dtype, args.tag]))

    def save(results: dict) -> None:  # after every table, so that a run cut short still leaves what it measured
        results["command"] = command
        args.out.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
        stem.with_suffix(".md").write_text(markdown(results))
        plot(results, stem.with_suffix(".png"))

    results = run(args, save)
    print(markdown(results))
    return results


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
