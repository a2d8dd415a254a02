"""Command-line flags shared by every entry point that loads a model, and the call that applies them."""

from __future__ import annotations

import argparse

from llava.sparse.methods import add_pruning_args, pruning_from_args


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", type=str, required=True, help="checkpoint folder (original or llava-hf)")
    parser.add_argument("--model-base", type=str, default=None, help="base LLM folder for projector-only checkpoints")
    parser.add_argument(
        "--vision-tower",
        type=str,
        default=None,
        help="CLIP tower folder or Hub id, overriding mm_vision_tower in config.json (Video-LLaVA: mm_image_tower)",
    )
    parser.add_argument(
        "--video-tower",
        type=str,
        default=None,
        help="Video-LLaVA: LanguageBind_Video_merge folder or Hub id, overriding mm_video_tower in config.json",
    )
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--device-map",
        type=str,
        default=None,
        help="spread a model too big for one GPU over several, whole decoder layers per device: auto (= balanced), "
        'balanced_low_0, sequential, or a JSON object module -> device, e.g. \'{"model.layers": 0, '
        '"model.layers.40": 1, ..., "model.layers.59": 1}\' (default: the whole model on --device)',
    )
    parser.add_argument(
        "--max-memory",
        type=str,
        default=None,
        help='with --device-map: JSON object device -> size, e.g. \'{"0": "30GiB", "1": "40GiB"}\'',
    )
    parser.add_argument(
        "--dtype",
        type=str,
        default=None,
        help="model dtype: float16 / bfloat16 / float32 (default: float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--vision-dtype",
        type=str,
        default=None,
        help="CLIP dtype (default float32 like LLaVA HEAD; float16 reproduces the 1.5 paper)",
    )
    parser.add_argument("--attn-implementation", type=str, default=None, choices=["eager", "sdpa", "flash_attention_2"])
    parser.add_argument("--use-flash-attn", action="store_true", help="same as --attn-implementation flash_attention_2")
    parser.add_argument(
        "--image-grid-pinpoints",
        type=str,
        default=None,
        help="LLaVA-NeXT: override the checkpoint's anyres resolutions, e.g. '[[672,672]]' (every image at 672x672, "
        "as FasterVLM's authors ran their NeXT numbers)",
    )
    parser.add_argument(
        "--anyres-rule",
        choices=("llava", "hf"),
        default=None,
        help="LLaVA-NeXT grid selection and unpadding: the original LLaVA code's (default) or transformers'",
    )
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        help="Qwen-VL: smallest image area after resizing (default: checkpoint's)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="Qwen-VL: largest image area after resizing (default: checkpoint's)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="decode through torch.compile (CUDA graphs on a GPU): faster long answers after a one-off compile per "
        "kept-token schedule; one device, eager or sdpa attention",
    )
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    add_pruning_args(parser)


def load_from_args(args: argparse.Namespace, env=None):
    """(tokenizer, model, image_processor, context_len) for the flags of `add_model_args`; the pruning method from
    the flags and, where a flag is absent, `env` (default: the process environment; `{}` for the flags alone)."""
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model
    from llava.model.placement import parse_device_map, parse_max_memory

    tokenizer, model, image_processor, context_len = load_pretrained_model(
        args.model_path,
        args.model_base,
        get_model_name_from_path(args.model_path),
        load_8bit=args.load_8bit,
        load_4bit=args.load_4bit,
        device_map=parse_device_map(getattr(args, "device_map", None)),
        device=args.device,
        use_flash_attn=args.use_flash_attn,
        dtype=args.dtype,
        vision_tower=args.vision_tower,
        video_tower=getattr(args, "video_tower", None),
        vision_dtype=args.vision_dtype,
        attn_implementation=args.attn_implementation,
        pruning=pruning_from_args(args, env),
        max_memory=parse_max_memory(getattr(args, "max_memory", None)),
        image_grid_pinpoints=getattr(args, "image_grid_pinpoints", None),
        anyres_rule=getattr(args, "anyres_rule", None),
        min_pixels=getattr(args, "min_pixels", None),
        max_pixels=getattr(args, "max_pixels", None),
    )
    if getattr(args, "compile", False):
        model.compile_decode()
    return tokenizer, model, image_processor, context_len
