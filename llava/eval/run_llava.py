"""Answer one query about one or more images, or about a video:
`python -m llava.eval.run_llava --model-path P --image-file F --query Q` (`--video-file V` instead of
`--image-file` on Video-LLaVA and Qwen-VL checkpoints)."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys

import torch

from llava.constants import DEFAULT_VIDEO_TOKEN, IMAGE_PLACEHOLDER
from llava.conversation import get_conv_template, resolve_conv_mode, stop_token_ids
from llava.mm_utils import (
    get_model_name_from_path,
    image_token,
    load_image,
    process_images,
    to_device,
    tokenizer_image_token,
)
from llava.model_args import add_model_args, load_from_args


def build_prompt(query: str, conv_mode: str, mm_use_im_start_end: bool, video: bool = False) -> str:
    """LLaVA's rule: `<image-placeholder>` marks where images go; without one, the image (or the video) precedes
    the query."""
    token = DEFAULT_VIDEO_TOKEN if video else image_token(mm_use_im_start_end)
    if IMAGE_PLACEHOLDER in query:
        query = re.sub(IMAGE_PLACEHOLDER, token, query)
    else:
        query = token + "\n" + query
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def eval_model(args: argparse.Namespace, loaded=None) -> str:
    """The answer; with `args.save_kept_map`, also the kept-token picture of the prefill written there."""
    tokenizer, model, image_processor, _ = loaded or load_from_args(args)
    conv_mode = resolve_conv_mode(args.conv_mode, get_model_name_from_path(args.model_path), model.config)
    video = args.video_file is not None
    prompt = build_prompt(args.query, conv_mode, model.config.mm_use_im_start_end, video)
    images, pixels, videos = [], None, None
    if video:
        clip = model.load_video(args.video_file, image_processor, num_frames=args.num_frames)
        videos = [clip.to(model.device, model.dtype) if isinstance(clip, torch.Tensor) else clip]
    else:
        images = [load_image(f) for f in args.image_file.split(args.sep)]
        pixels = to_device(process_images(images, image_processor, model.config), model.device, model.dtype)
    input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    generator = torch.Generator(device=model.device).manual_seed(args.seed) if args.seed is not None else None
    kept_map_path = getattr(args, "save_kept_map", None)
    capture = contextlib.nullcontext([])
    if kept_map_path:
        from llava.analysis.kept_map import capture_plans

        capture = capture_plans(model)
    with capture as plans:
        output_ids = model.generate(
            input_ids,
            images=pixels,
            image_sizes=[im.size for im in images] or None,
            videos=videos,
            do_sample=args.temperature > 0,
            temperature=args.temperature,
            top_p=args.top_p,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            generator=generator,
            eos_token_id=stop_token_ids(get_conv_template(conv_mode), tokenizer),
        )
    for account in model.last_accounts:
        print(account.line(color=sys.stderr.isatty()), file=sys.stderr)
    answer = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    if kept_map_path:
        from llava.analysis.kept_map import map_of_generation, save_kept_map

        title = f"{model.pruning.describe()} | Q: {args.query}"
        picture = map_of_generation(
            model,
            tokenizer,
            plans,
            input_ids,
            images[0] if images else None,
            videos[0] if video else None,
            answer,
            title,
        )
        save_kept_map(kept_map_path, picture)
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_args(parser)
    visual = parser.add_mutually_exclusive_group(required=True)
    visual.add_argument("--image-file", type=str, help="path or http(s) URL; several joined by --sep")
    visual.add_argument("--video-file", type=str, help="a video file (Video-LLaVA, Qwen2(.5)-VL checkpoints)")
    parser.add_argument("--num-frames", type=int, default=None, help="frames sampled from --video-file")
    parser.add_argument("--query", type=str, required=True)
    parser.add_argument(
        "--conv-mode", type=str, default=None, help="default: inferred from the checkpoint name (conv_mode_for_model)"
    )
    parser.add_argument("--sep", type=str, default=",")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (temperature > 0)")
    parser.add_argument(
        "--save-kept-map",
        type=str,
        default=None,
        help="write a PNG of the visual tokens each pruning stage kept (llava.analysis.kept_map) there",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print(eval_model(args))


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
