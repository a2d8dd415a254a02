import pytest

from llava.conversation import get_conv_template

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
