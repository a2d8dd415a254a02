"""The one answer-generation loop behind every benchmark generator (model_vqa_loader, model_vqa_science,
model_vqa_mmbench, model_vqa, model_vqa_qbench).

A generator turns its question file into `Question`s; this module does the rest the same way for all of them:
chunking (`--num-chunks/--chunk-idx`, or one chunk per process under torchrun), resuming (questions already in the
answers file are skipped), batching with left padding, a progress bar, per-answer efficiency metadata, and
recording an unreadable image as a failed answer instead of stopping the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import shortuuid
import torch
from PIL import Image

from llava.constants import DEFAULT_VIDEO_TOKEN
from llava.conversation import get_conv_template, stop_token_ids
from llava.eval.answer_files import AnswerWriter, iter_jsonl
from llava.mm_utils import get_model_name_from_path, image_token, process_images, to_device, tokenizer_image_token
from llava.model_args import add_model_args, load_from_args
from llava.sparse.accounting import run_summary


@dataclasses.dataclass
class Question:
    """One question: `text` is the user's message without the image token; `image` opens the image (None for a
    text-only or video question); `video` is the video file of a video question; `record` holds the fields the
    answer record starts from (question_id, prompt, ...)."""

    text: str
    image: Callable[[], Image.Image] | None
    record: dict
    video: Path | None = None  # a video file instead of an image (Video-LLaVA, Qwen-VL video)


def add_generation_args(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """LLaVA's generator flags, plus --batch-size; model and pruning flags come from `add_model_args`."""
    add_model_args(parser)
    parser.add_argument("--question-file", type=str, default=None)
    parser.add_argument("--image-folder", type=str, default="")
    parser.add_argument("--answers-file", type=str, required=True)
    parser.add_argument(
        "--conv-mode", type=str, default=None, help="prompt template (default: the model's own, else llava_v1)"
    )
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="default: the checkpoint's generation config (1.05 for Qwen-VL Instruct, as transformers and lmms-eval "
        "apply it), else 1.0; recorded in each answer's metadata",
    )
    parser.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=1, help="questions per forward pass (left-padded)")
    parser.add_argument(
        "--image-mode",
        choices=["pad", "crop"],
        default=None,
        help="override the checkpoint's image_aspect_ratio: pad (LLaVA-1.5 HEAD) or crop (pre-1.6 "
        "SQA / LLaVA-W / MM-Vet, Q-Bench)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling (temperature > 0)")


def image_mode(args: argparse.Namespace, config) -> str:
    """How images are preprocessed: `--image-mode` if given; else anyres for LLaVA-NeXT checkpoints; else the
    generator's own LLaVA-1.5 mode (`legacy_image_mode`, e.g. Q-Bench's crop); else the checkpoint's pad, or crop."""
    if args.image_mode:
        return args.image_mode
    if config.image_aspect_ratio in ("anyres", "qwen"):
        return config.image_aspect_ratio
    legacy = getattr(args, "legacy_image_mode", None)
    if legacy:
        return legacy
    return "pad" if config.image_aspect_ratio == "pad" else "crop"


def distributed_chunk(args: argparse.Namespace) -> None:
    """Under torchrun, each process takes chunk RANK of WORLD_SIZE, writes `<answers>.chunks/N_k.jsonl` and uses
    GPU LOCAL_RANK; `python -m llava.eval.merge_chunks` then joins the chunks in question order."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    args.num_chunks, args.chunk_idx = world, rank
    args.answers_file = str(chunk_path(args.answers_file, world, rank))
    if torch.cuda.is_available() and args.device in ("auto", "cuda"):
        args.device = f"cuda:{local}"


def chunk_path(answers_file: str | os.PathLike, num_chunks: int, chunk_idx: int) -> Path:
    answers_file = Path(answers_file)
    return answers_file.parent / f"{answers_file.stem}.chunks" / f"{num_chunks}_{chunk_idx}.jsonl"


def get_chunk(items: list, num_chunks: int, chunk_idx: int) -> list:
    """Contiguous slice k of n of size ceil(len / n) (LLaVA's split_list / get_chunk)."""
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx {chunk_idx} must be in 0..{num_chunks - 1}")
    size = math.ceil(len(items) / num_chunks)
    return items[chunk_idx * size : (chunk_idx + 1) * size]


def read_questions(path: str | os.PathLike, required=("question_id", "text")) -> list[dict]:
    return list(iter_jsonl(path, required))


def image_opener(path: Path, convert_rgb: bool = True) -> Callable[[], Image.Image]:
    def open_image() -> Image.Image:
        image = Image.open(path)
        image.load()
        return image.convert("RGB") if convert_rgb else image

    return open_image


def question_seed(seed: int, question_id, prompt: str) -> int:
    """A 63-bit sampling seed that depends on exactly (seed, question id, prompt): each answer draws from its own
    generator, so a resumed, re-chunked, re-batched or sharded run samples the same answers as one whole run."""
    key = "\0".join((str(seed), str(question_id), prompt)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def question_generator(seed: int, question: Question, device) -> torch.Generator:
    """The sampling generator of one question (unused by greedy decoding)."""
    seed = question_seed(seed, question.record.get("question_id"), question.text)
    return torch.Generator(device=device).manual_seed(seed)


def generate_answers(questions: list[Question], args: argparse.Namespace, loaded=None) -> Path:
    """Answer this process's chunk of `questions` into args.answers_file (resuming); returns the file."""
    distributed_chunk(args)
    chunk = get_chunk(questions, args.num_chunks, args.chunk_idx)
    writer = AnswerWriter(args.answers_file)
    todo = [q for q in chunk if not writer.done(q.record)]
    if not todo:
        writer.close()
        print(f"All {len(chunk)} questions of this chunk are already answered in {args.answers_file}", file=sys.stderr)
        return Path(args.answers_file)
    tokenizer, model, image_processor, _ = loaded or load_from_args(args)
    model_id = get_model_name_from_path(args.model_path)
    mode = image_mode(args, model.config)
    args.conv_mode = args.conv_mode or getattr(model.config, "conv_mode", None) or "llava_v1"
    method = model.pruning.describe()
    from tqdm import tqdm

    progress = tqdm(
        total=len(chunk),
        initial=len(chunk) - len(todo),
        desc=Path(args.answers_file).name,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    answered, failed = [], 0  # this run's answers' metadata, for the closing summary line
    with writer:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            results = answer_batch(batch, args, tokenizer, model, image_processor, mode)
            for question, (text, metadata, error) in zip(batch, results, strict=True):
                if error is None:
                    answered.append(metadata)
                else:
                    failed += 1
                record = {
                    **question.record,
                    "text": text,
                    "answer_id": shortuuid.uuid(),
                    "model_id": model_id,
                    "metadata": {"method": method, **metadata},
                }
                if error is not None:
                    record["error"] = error
                writer.write(record)
            progress.update(len(batch))
    progress.close()
    print(run_summary(answered, failed), file=sys.stderr)
    return Path(args.answers_file)


def answer_batch(batch, args, tokenizer, model, image_processor, mode):
    """(text, metadata, error) per question; questions whose image cannot be read fail alone."""
    results: list = [None] * len(batch)
    ready, images, videos = [], [], []
    for i, question in enumerate(batch):
        if question.image is None and question.video is None:
            ready.append(i)
            continue
        what = "image" if question.video is None else "video"
        try:
            if question.video is None:
                images.append(question.image())
            else:
                options = {"num_frames": getattr(args, "num_frames", None)}
                if getattr(args, "repeat_short_videos", False):
                    options["repeat_short"] = True
                for flag, name in (("video_fps", "fps"), ("max_frames", "max_frames")):  # Qwen-VL's sampling
                    if getattr(args, flag, None) is not None:
                        options[name] = getattr(args, flag)
                videos.append(model.load_video(question.video, image_processor, **options))
            ready.append(i)
        except (OSError, ValueError) as err:  # unreadable, missing or corrupt image / video: record and go on
            results[i] = ("", {}, f"{what} could not be read: {type(err).__name__}: {err}")
    penalty = args.repetition_penalty
    if penalty is None:
        penalty = getattr(model.config, "repetition_penalty", 1.0)
    with_image = [i for i in ready if batch[i].image is not None]
    with_video = [i for i in ready if batch[i].video is not None]
    text_only = [i for i in ready if batch[i].image is None and batch[i].video is None]
    # a batch mixes image, video and text-only questions only as sub-batches (each sample holds one visual input)
    for group, group_images, group_videos in (
        (with_image, images, None),
        (with_video, [], videos),
        (text_only, [], None),
    ):
        if not group:
            continue
        prompts = []
        for i in group:
            conv = get_conv_template(args.conv_mode)
            text = batch[i].text
            if batch[i].image is not None:
                text = image_token(model.config.mm_use_im_start_end) + "\n" + text
            elif batch[i].video is not None:
                text = DEFAULT_VIDEO_TOKEN + "\n" + text
            conv.append_message(conv.roles[0], text)
            conv.append_message(conv.roles[1], None)
            prompts.append(tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt"))
        pixels, sizes = None, None
        if group_images:  # "pad" squares each image first, "crop" only resizes and crops, "anyres" cuts views
            mode_cfg = model.config if mode in ("anyres", "qwen") else argparse.Namespace(image_aspect_ratio=mode)
            pixels = to_device(process_images(group_images, image_processor, mode_cfg), model.device, model.dtype)
            sizes = [image.size for image in group_images]
        output = model.generate(
            prompts,
            images=pixels,
            image_sizes=sizes,
            videos=group_videos,
            eos_token_id=stop_token_ids(conv, tokenizer),
            do_sample=args.temperature > 0,
            temperature=args.temperature,
            top_p=args.top_p,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            repetition_penalty=penalty,
            generator=[question_generator(args.seed, batch[i], model.device) for i in group],
        )
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        for i, text, account in zip(group, texts, model.last_accounts, strict=True):
            results[i] = (text.strip(), {**account.as_metadata(), "repetition_penalty": penalty}, None)
    return results
