"""`--model llava_sparse` for lmms-eval 0.7.3: any checkpoint `llava.model.builder.load_pretrained_model` loads
(LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, Video-LLaVA) with any pruning method, answering lmms-eval's `generate_until`
requests the way our own generators answer a question file (`llava.eval.answering`), with our efficiency figures in
every logged sample.

    lmms-eval --model llava_sparse \
        --model_args pretrained=<ckpt>,method=sparsevlm,retained_tokens=192,sparse_version=2_0 \
        --tasks mme,pope --batch_size 8 --log_samples --output_path out/

`--model_args` keys are our command-line flags without the dashes (`retained_tokens` = `--retained-tokens`, `dtype`,
`attn_implementation`, `device_map`, `fastv_k`, ...; `pretrained` = `--model-path`), parsed by the same argparse flags
as the generators, plus this adapter's own: `conv_template` (default: the checkpoint's, else vicuna_v1), `apply_until`
(default false; true cuts answers at the task's `until` strings), `multi_image` (error | first | middle: which of
several images a question keeps), `image_aspect_ratio` (pad | crop; default: the checkpoint's), `num_frames` (video)
and `seed` (sampling, as our generators' --seed). An unknown key raises TypeError. The pruning method comes from
`--model_args` only: METHOD, RETAIN_TOKN and USE_VERSION in the environment are ignored, since lmms-eval records only
`--model_args` with the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms

from llava.conversation import get_conv_template
from llava.eval.answering import Question, answer_batch, image_mode
from llava.model_args import add_model_args, load_from_args
from llava.sparse.accounting import run_summary

DEFAULT_MAX_NEW_TOKENS = 128  # LLaVA's generators; lmms-eval's own default (1024) only matters when EOS comes late
MULTI_IMAGE = ("error", "first", "middle")
IMAGE_MODES = ("pad", "crop")
# our flags that --model_args must not set: `pretrained` names the checkpoint, lmms-eval's --device the device
RESERVED_FLAGS = ("--model-path", "--device", "--help")
ADAPTER_KEYS = ("conv_template", "apply_until", "multi_image", "image_aspect_ratio", "num_frames", "seed")
IMAGE_PLACEHOLDER = re.compile(r"<image>\n?")


@dataclasses.dataclass
class EfficiencyCounts(TokenCounts):
    """lmms-eval's per-request token counts plus our efficiency metadata: lmms-eval writes `to_dict()` into the
    `token_counts` of every logged sample, so equal tokens, TFLOPs, prefill time and KV cache land there too."""

    metadata: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**super().to_dict(), **self.metadata}


class ModelArgsParser(argparse.ArgumentParser):
    """Our model and pruning flags, raising instead of exiting: a bad `--model_args` value is a plain error."""

    def error(self, message: str):
        raise ValueError(f"llava_sparse --model_args: {message}")


def model_flags(pretrained: str, model_args: dict) -> argparse.Namespace:
    """The namespace our generators' flags give for `pretrained` and the `--model_args` keys: `retained_tokens=64` is
    `--retained-tokens 64`; true / false switch a flag on / off; a flag taking several values takes them separated
    by spaces (`pruning_layers=2 6 15`). Raises TypeError for a key that is no flag of ours."""
    parser = ModelArgsParser(add_help=False, allow_abbrev=False)
    add_model_args(parser)
    actions = {option: action for action in parser._actions for option in action.option_strings}
    argv = ["--model-path", str(pretrained)]
    for key, value in model_args.items():
        option = next((o for o in (f"--{key.replace('_', '-')}", f"--{key}") if o in actions), None)
        if option is None or option in RESERVED_FLAGS:
            raise TypeError(
                f"llava_sparse: unknown --model_args key {key!r}: use pretrained=<checkpoint>, this adapter's "
                f"{', '.join(ADAPTER_KEYS)}, or one of our model and pruning flags without the dashes (method, "
                "retained_tokens, sparse_version, dtype, fastv_k, ...: `python -m llava.eval.model_vqa_loader --help`)"
            )
        action = actions[option]
        if action.nargs == 0:  # a switch (store_true)
            if as_bool(key, value):
                argv.append(option)
        elif action.nargs not in (None, "?"):
            argv += [option, *(value if isinstance(value, (list, tuple)) else str(value).split())]
        else:
            argv.append(f"{option}={value}")
    return parser.parse_args(argv)


def as_bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"llava_sparse --model_args: {key}={value!r} must be true or false")


def split_model_args(arg_string: str) -> dict[str, str]:
    """`key=value,key=value` as strings. lmms-eval's own parsing turns values into numbers (`sparse_version=2_0`
    would become 20.0, since float() accepts underscores); here argparse types them, as on our command line."""
    from lmms_eval.utils import _smart_comma_split

    out = {}
    for item in _smart_comma_split(arg_string.strip()) if arg_string.strip() else []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"llava_sparse --model_args: {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def pick_device(device: str | None) -> str:
    """lmms-eval's --device, else GPU LOCAL_RANK (one process per GPU under `accelerate launch`), else the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "", "auto"):
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{local_rank}"
    return device


def generation_settings(gen_kwargs: dict, conv_mode: str, seed: int, num_frames: int | None) -> argparse.Namespace:
    """The generator flags (`llava.eval.answering.add_generation_args`) one task's `generation_kwargs` stand for:
    greedy unless the task asks for sampling (do_sample and temperature > 0), LLaVA's 128 new tokens unless it says;
    keys our generation has no use for (image_aspect_ratio, until, ...) are left out."""
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    sampling = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
    num_beams = int(gen_kwargs.get("num_beams") or 1)
    if num_beams != 1:
        raise ValueError(f"llava_sparse generates with num_beams=1 only; the task asks for {num_beams}")
    penalty = gen_kwargs.get("repetition_penalty")
    return argparse.Namespace(
        temperature=temperature if sampling else 0.0,
        top_p=gen_kwargs.get("top_p") if sampling else None,
        num_beams=1,
        max_new_tokens=int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
        repetition_penalty=None if penalty is None else float(penalty),
        conv_mode=conv_mode,
        seed=seed,
        num_frames=num_frames,
    )


def cut_at_until(text: str, until) -> str:
    """The answer up to the first stop string of the task (`until`), as lmms-eval's stop sequences mean."""
    for stop in [until] if isinstance(until, str) else list(until or []):
        if stop:
            text = text.split(stop, 1)[0]
    return text


class LlavaSparse(lmms):
    """lmms-eval's simple-model interface around `load_pretrained_model` and our generation loop."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        device: str | None = None,
        conv_template: str | None = None,
        apply_until: bool | str = False,
        multi_image: str = "error",
        image_aspect_ratio: str | None = None,
        num_frames: int | str | None = None,
        seed: int | str = 0,
        **flags,
    ) -> None:
        super().__init__()
        if str(batch_size).startswith("auto"):
            raise ValueError("llava_sparse: --batch_size auto is not supported; give a number")
        self._batch_size = int(batch_size)
        if self._batch_size < 1:
            raise ValueError(f"llava_sparse: --batch_size must be >= 1, got {batch_size}")
        if multi_image not in MULTI_IMAGE:
            raise ValueError(f"llava_sparse: multi_image={multi_image!r}; use one of {', '.join(MULTI_IMAGE)}")
        if image_aspect_ratio not in (None, *IMAGE_MODES):
            raise ValueError(f"llava_sparse: image_aspect_ratio={image_aspect_ratio!r}; use pad or crop")
        self.apply_until = as_bool("apply_until", apply_until)
        self.multi_image = multi_image
        self.num_frames = None if num_frames in (None, "") else int(num_frames)
        self.seed = int(seed)
        args = model_flags(pretrained, flags)
        args.device = pick_device(device)
        self.retained_tokens = args.retained_tokens
        # never the environment: results and lmms-eval's response cache record only --model_args
        self.tokenizer, self._model, self.image_processor, _ = load_from_args(args, env={})
        self._device = self._model.device
        self.conv_mode = conv_template or getattr(self._model.config, "conv_mode", None) or "vicuna_v1"
        get_conv_template(self.conv_mode)  # an unknown template fails here, not at the first batch
        self.image_mode = image_mode(argparse.Namespace(image_mode=image_aspect_ratio), self._model.config)
        self.method = self._model.pruning.describe()

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config: dict | None = None) -> LlavaSparse:
        """As lmms-eval's, but values stay strings for argparse to type (see `split_model_args`)."""
        model_args = dict(arg_string) if isinstance(arg_string, dict) else split_model_args(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**model_args, **extra)

    @property
    def model(self):
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def loglikelihood(self, requests):
        raise NotImplementedError("llava_sparse answers generate_until tasks only (no loglikelihood / multiple-choice)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("llava_sparse answers single-turn generate_until tasks only")

    def generate_until(self, requests) -> list[GenerationResult]:
        """One answer per request, in request order. Requests are batched within one (task, split, gen_kwargs)
        group only (one lmms-eval call mixes tasks), in chunks of batch_size whose image, video and text-only
        questions go to the model as separate batches; only one chunk's images are in memory at a time."""
        from tqdm import tqdm

        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            _, gen_kwargs, _, _, task, split = request.args
            groups.setdefault((task, split, json.dumps(gen_kwargs, sort_keys=True, default=str)), []).append(index)
        results: list[GenerationResult | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), desc="llava_sparse", disable=self.rank != 0)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            settings = generation_settings(gen_kwargs, self.conv_mode, self.seed, self.num_frames)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                questions = {index: self.question(requests[index]) for index in chunk}
                for kind in ("image", "video", "text"):
                    batch = [index for index in chunk if question_kind(questions[index]) == kind]
                    if batch:
                        answers = self.answer([questions[index] for index in batch], settings, gen_kwargs)
                        for index, answer in zip(batch, answers, strict=True):
                            results[index] = answer
                progress.update(len(chunk))
        progress.close()
        mine = zip(map(question_id, requests), (result.token_counts.metadata for result in results), strict=True)
        by_question = self.every_rank(dict(mine))
        if self.rank == 0:  # the closing line of our own generators, over every process's answers
            answered = [counts for counts in by_question.values() if "error" not in counts]
            print(run_summary(answered, len(by_question) - len(answered)), file=sys.stderr)
        return results

    def every_rank(self, by_question: dict) -> dict:
        """This process's {question: counts} merged with the other processes' under `accelerate launch` / torchrun
        (lmms-eval shards the requests and pads the shorter shards with repeats, which the keys fold away)."""
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return by_question
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, by_question)
        return {key: value for part in parts for key, value in part.items()}

    def question(self, request) -> Question:
        """The request as one of our generators' questions: lmms-eval's prompt (`ctx`, whose `<image>`, if any, goes
        to the front, where our prompt puts the image) and the doc's image, video file or nothing."""
        ctx, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1:
            if self.multi_image == "error":
                raise ValueError(
                    f"llava_sparse: {task} doc {doc_id} has {len(visuals)} images or frames; this model takes one "
                    "per question: pass multi_image=first or multi_image=middle (LLaVA's choice for SEED video)"
                )
            visuals = [visuals[0] if self.multi_image == "first" else visuals[len(visuals) // 2]]
        record = {"question_id": question_id(request)}  # seeds sampling per question, as our generators
        text = IMAGE_PLACEHOLDER.sub("", ctx)
        if not visuals:
            return Question(text=text, image=None, record=record)
        visual = visuals[0]
        if isinstance(visual, (str, os.PathLike)):
            return Question(text=text, image=None, record=record, video=Path(visual))
        return Question(text=text, image=lambda: visual.convert("RGB"), record=record)

    def answer(self, batch: list[Question], settings: argparse.Namespace, gen_kwargs: dict) -> list[GenerationResult]:
        """Our generators' batch step (`llava.eval.answering.answer_batch`) on questions of one kind, so that
        `model.last_accounts` holds exactly their prefill accounts, in order."""
        answers = answer_batch(batch, settings, self.tokenizer, self._model, self.image_processor, self.image_mode)
        accounts = iter(self._model.last_accounts)
        out = []
        for text, metadata, error in answers:
            counts = {"method": self.method, "retained_tokens": self.retained_tokens, **metadata}
            input_tokens = None
            if error is None:
                account = next(accounts)
                if account.tokens_into_layer:  # the prompt before pruning: text + every encoded visual token
                    encoded = account.num_encoded if account.num_encoded is not None else account.num_visual
                    input_tokens = account.tokens_into_layer[0] - account.num_visual + encoded
            else:
                counts["error"] = error
            if self.apply_until:
                text = cut_at_until(text, gen_kwargs.get("until")).strip()
            output_tokens = len(self.tokenizer(text, add_special_tokens=False).input_ids) if text else 0
            out.append(GenerationResult(text, EfficiencyCounts(input_tokens, output_tokens, metadata=counts)))
        return out


def question_id(request) -> str:
    """`task/split/doc_id`: the same on every process and in every run."""
    *_, doc_id, task, split = request.args
    return f"{task}/{split}/{doc_id}"


def question_kind(question: Question) -> str:
    if question.video is not None:
        return "video"
    return "text" if question.image is None else "image"
