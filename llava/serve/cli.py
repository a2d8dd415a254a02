"""Interactive chat about an image in the terminal, streaming tokens: `python -m llava.serve.cli --model-path P
--image-file F`. An empty line or end of input quits."""

from __future__ import annotations

import argparse

from transformers import TextStreamer

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_args(parser)
    parser.add_argument("--image-file", type=str, required=True)
    parser.add_argument(
        "--conv-mode", type=str, default=None, help="default: inferred from the checkpoint name (conv_mode_for_model)"
    )
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    tokenizer, model, image_processor, _ = load_from_args(args)
    conv = get_conv_template(resolve_conv_mode(args.conv_mode, get_model_name_from_path(args.model_path), model.config))
    image = load_image(args.image_file)
    pixels = to_device(process_images([image], image_processor, model.config), model.device, model.dtype)
    token = image_token(model.config.mm_use_im_start_end)
    first = True
    while True:
        try:
            text = input(f"{conv.roles[0]}: ")
        except EOFError:
            text = ""
        if not text:
            print("exit...")
            break
        print(f"{conv.roles[1]}: ", end="", flush=True)
        if first:
            text = token + "\n" + text
            first = False
        conv.append_message(conv.roles[0], text)
        conv.append_message(conv.roles[1], None)
        input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        output_ids = model.generate(
            input_ids,
            images=pixels,
            image_sizes=[image.size],
            do_sample=args.temperature > 0,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            streamer=streamer,
            eos_token_id=stop_token_ids(conv, tokenizer),
        )
        answer = tokenizer.decode(output_ids[0], skip_special_tokens=True).strip()
        conv.messages[-1][-1] = answer
        if args.debug:
            print("\n", {"prompt": conv.get_prompt(), "outputs": answer}, "\n")


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main, debug_flag_is_main_own=True)
