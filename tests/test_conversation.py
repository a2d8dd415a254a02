import pytest

from llava.conversation import (
    conv_mode_for_model,
    get_conv_template,
    resolve_conv_mode,
    stop_strings,
    stop_token_ids,
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def single_turn(mode: str, text: str) -> str:
    conv = get_conv_template(mode)
    conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def test_vicuna_v1_single_turn_prompt_is_exact():
    prompt = single_turn("vicuna_v1", "<image>\nWhat is the color of the bus?")
    assert prompt == VICUNA_SYSTEM + " USER: <image>\nWhat is the color of the bus? ASSISTANT:"


def test_llava_v1_says_human():
    prompt = single_turn("llava_v1", "<image>\nQ")
    expected = VICUNA_SYSTEM.replace("curious user", "curious human").replace("the user's", "the human's")
    assert prompt == expected + " USER: <image>\nQ ASSISTANT:"


def test_multi_turn_assistant_turn_ends_with_eos_string_and_no_space():
    conv = get_conv_template("vicuna_v1")
    conv.append_message("USER", "hi")
    conv.append_message("ASSISTANT", "hello")
    conv.append_message("USER", "again")
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == VICUNA_SYSTEM + " USER: hi ASSISTANT: hello</s>USER: again ASSISTANT:"


def test_plain_template_is_the_bare_message():
    conv = get_conv_template("plain")
    conv.append_message(conv.roles[0], "<image>\nQ")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == "<image>\nQ\n"


def test_templates_are_copies():
    conv = get_conv_template("vicuna_v1")
    conv.append_message("USER", "x")
    assert get_conv_template("vicuna_v1").messages == []


def test_unknown_template_lists_known_ones():
    with pytest.raises(ValueError, match="vicuna_v1"):
        get_conv_template("vicuna_v9")


def multi_turn(mode: str) -> str:
    conv = get_conv_template(mode)
    conv.append_message(conv.roles[0], "<image>\nq1")
    conv.append_message(conv.roles[1], "a1")
    conv.append_message(conv.roles[0], "q2")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def test_mistral_instruct_single_turn_prompt_is_exact():
    prompt = single_turn("mistral_instruct", "<image>\nWhat is the color of the bus?")
    assert prompt == "[INST] <image>\nWhat is the color of the bus? [/INST]"


def test_mistral_instruct_multi_turn_prompt_is_exact():
    assert multi_turn("mistral_instruct") == "[INST] <image>\nq1 [/INST] a1 </s>[INST] q2 [/INST]"


def test_llama_2_style_wraps_a_non_empty_system_in_the_first_inst_only():
    conv = get_conv_template("mistral_instruct")
    conv.system = "Be brief."
    conv.sep = "<s>"
    conv.append_message("USER", "q1")
    conv.append_message("ASSISTANT", "a1")
    conv.append_message("USER", "q2")
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]"


def test_llama_2_style_rejects_a_conversation_not_opened_by_the_user():
    conv = get_conv_template("mistral_instruct")
    conv.append_message("ASSISTANT", "hello")
    with pytest.raises(ValueError, match="user"):
        conv.get_prompt()
    with pytest.raises(ValueError, match="empty"):
        get_conv_template("mistral_instruct").get_prompt()


def test_chatml_direct_single_turn_prompt_is_exact():
    prompt = single_turn("chatml_direct", "<image>\nWhat is the color of the bus?")
    assert prompt == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is the color of the bus?<|im_end|>"
        "<|im_start|>assistant\n"
    )


def test_chatml_direct_multi_turn_prompt_is_exact():
    assert multi_turn("chatml_direct") == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\nq1<|im_end|>"
        "<|im_start|>assistant\na1<|im_end|>"
        "<|im_start|>user\nq2<|im_end|>"
        "<|im_start|>assistant\n"
    )


def test_mistral_direct_is_an_alias_of_chatml_direct():
    assert single_turn("mistral_direct", "Q") == single_turn("chatml_direct", "Q")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("vicuna_v1", ["</s>"]),
        ("llava_v1", ["</s>"]),
        ("mistral_instruct", ["</s>"]),
        ("chatml_direct", ["<|im_end|>"]),
        ("plain", []),
    ],
)
def test_stop_strings(mode, expected):
    assert stop_strings(get_conv_template(mode)) == expected


def test_stop_token_ids_add_im_end_for_chatml_when_it_is_one_token(tmp_path):
    from transformers import AutoTokenizer

    from llava.testing.tokenizer import save_tokenizer

    save_tokenizer(tmp_path / "chatml", extra_special_tokens=["<|im_end|>"])
    save_tokenizer(tmp_path / "plain")
    chatml = AutoTokenizer.from_pretrained(tmp_path / "chatml")
    plain = AutoTokenizer.from_pretrained(tmp_path / "plain")
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    assert chatml("<|im_end|>", add_special_tokens=False).input_ids == [im_end]
    assert im_end != chatml.eos_token_id

    assert stop_token_ids(get_conv_template("chatml_direct"), chatml) == [chatml.eos_token_id, im_end]
    assert stop_token_ids(get_conv_template("chatml_direct"), plain) == [plain.eos_token_id]
    for mode in ("vicuna_v1", "mistral_instruct", "plain"):
        assert stop_token_ids(get_conv_template(mode), chatml) == [chatml.eos_token_id]


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("llava-v1.6-vicuna-7b", "llava_v1"),
        ("llava-v1.6-vicuna-13b", "llava_v1"),
        ("llava-v1.6-mistral-7b", "mistral_instruct"),
        ("LLaVA-v1.6-Mistral-7B", "mistral_instruct"),
        ("llava-v1.6-34b", "chatml_direct"),
        ("llava-v1.5-13b", "llava_v1"),
        ("llava-v1.5-7b_checkpoint-500", "llava_v1"),
        ("tiny-llava", "llava_v1"),
    ],
)
def test_conv_mode_for_model(name, mode):
    assert conv_mode_for_model(name) == mode


def test_an_explicit_conv_mode_wins_with_a_warning(capsys):
    assert resolve_conv_mode(None, "llava-v1.6-34b") == "chatml_direct"
    assert capsys.readouterr().err == ""
    assert resolve_conv_mode("vicuna_v1", "llava-v1.6-34b") == "vicuna_v1"
    assert "auto inferred conversation mode is chatml_direct" in capsys.readouterr().err
    assert resolve_conv_mode("chatml_direct", "llava-v1.6-34b") == "chatml_direct"
    assert capsys.readouterr().err == ""


def test_run_llava_conv_mode_defaults_to_inference_from_the_name():
    from llava.eval import run_llava

    base = ["--model-path", "/ckpt/llava-v1.6-mistral-7b", "--image-file", "x.png", "--query", "Q"]
    assert run_llava.build_parser().parse_args(base).conv_mode is None
    assert run_llava.build_parser().parse_args([*base, "--conv-mode", "vicuna_v1"]).conv_mode == "vicuna_v1"
