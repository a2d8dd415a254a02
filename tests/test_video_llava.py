"""Video-LLaVA on our engine: the original format (LanguageBind towers, temporal attention) and the -hf format,
against transformers' own `VideoLlavaForConditionalGeneration` on the same weights; every pruning method on video
(keep-everything, batches, per-frame budgets, SparseVLM's video branch against a brute-force rank)."""

import json

import pytest
import torch
import transformers

from llava.constants import VIDEO_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.sparse.fastv import FastV
from llava.sparse.pre_llm import FasterVLM, FasterVLMGlobal, RandomPruning, UniformPruning
from llava.sparse.sparsevlm import SparseVLM
from llava.testing.video_llava import convert_video_llava_to_hf, write_tiny_video_llava
from llava.testing.videos import synthetic_frames, write_video

from .helpers import random_image

FRAMES, PATCHES = 8, 16  # 56-px frames of 14-px patches: 8 x (1 + 16) = 136 visual tokens per clip


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("video_llava")


@pytest.fixture(scope="module")
def original(root):
    """The original format with its temporal attention on."""
    folder = write_tiny_video_llava(root / "temporal", seed=1)
    return load_pretrained_model(str(folder), device="cpu", pruning=None)[:3]


@pytest.fixture(scope="module")
def parity(root):
    """The original format with the temporal parts zeroed, its -hf conversion, and transformers' model on it."""
    folder = write_tiny_video_llava(root / "zero", seed=2, zero_temporal=True)
    hf = convert_video_llava_to_hf(folder, root / "zero-hf")
    ours = load_pretrained_model(str(folder), device="cpu", pruning=None)[:3]
    ours_hf = load_pretrained_model(str(hf), device="cpu", pruning=None)[:3]
    reference = transformers.VideoLlavaForConditionalGeneration.from_pretrained(
        str(hf), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return ours, ours_hf, reference


@pytest.fixture(scope="module")
def clips(root, original):
    _, model, processor = original
    paths = [
        write_video(root / "a.mp4", synthetic_frames(37, 96, 64)),
        write_video(root / "b.mkv", synthetic_frames(12, 64, 80)),
    ]
    return [model.load_video(path, processor) for path in paths]


def prompt(tokenizer, question, visual="<video>"):
    conv = get_conv_template("llava_v1")
    conv.append_message(conv.roles[0], f"{visual}\n{question}")
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


QUESTIONS = ["What happens in the video?", "What colour is the square? Answer with one word."]


def hf_inputs(reference, ids, clip=None, pixels=None):
    """transformers' input ids (one placeholder id per visual token) and pixel tensors for our prompt."""
    config = reference.config
    if clip is not None:
        at = int((ids == VIDEO_TOKEN_INDEX).nonzero()[0, 0])
        block = torch.full((FRAMES * (PATCHES + 1),), config.video_token_index)
        hf_ids = torch.cat([ids[:at], block, ids[at + 1 :]])[None]
        return {"input_ids": hf_ids, "pixel_values_videos": clip.permute(1, 0, 2, 3)[None]}
    at = int((ids == -200).nonzero()[0, 0])
    hf_ids = torch.cat([ids[:at], torch.full((PATCHES,), config.image_token_index), ids[at + 1 :]])[None]
    return {"input_ids": hf_ids, "pixel_values_images": pixels}


def test_config_and_towers_are_recognised(original, parity):
    _, model, _ = original
    assert model.config.is_video_llava and model.model.video_tower.temporal
    assert model.model.video_tower.num_frames == FRAMES and model.nominal_visual_tokens == FRAMES * (PATCHES + 1)
    (_, hf_model, _) = parity[1]
    assert hf_model.config.is_video_llava and not hf_model.model.video_tower.temporal


def test_unpruned_video_logits_equal_transformers(parity, clips):
    """Temporal parts zeroed, the original format (LanguageBind towers from their folders) and the -hf format
    both give transformers' logits on the converted weights (the text rows: -hf appends three tokens)."""
    (tokenizer, ours, _), (_, ours_hf, _), reference = parity
    ids = prompt(tokenizer, QUESTIONS[0])
    with torch.no_grad():
        expected = reference(**hf_inputs(reference, ids, clips[0])).logits[0]
        got = ours(ids[None], videos=[clips[0]])[0]
        got_hf = ours_hf(ids[None], videos=[clips[0]])[0]
    vocab = got.shape[-1]
    assert (got - expected[:, :vocab]).abs().max() < 1e-4
    assert (got_hf[:, :vocab] - expected[:, :vocab]).abs().max() < 1e-4


def test_greedy_video_answers_equal_transformers_generate(parity, clips):
    (tokenizer, ours, _), _, reference = parity
    for question, clip in zip(QUESTIONS, clips, strict=True):
        ids = prompt(tokenizer, question)
        inputs = hf_inputs(reference, ids, clip)
        with torch.no_grad():
            hf_out = reference.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
        got = ours.generate(ids[None], videos=[clip], max_new_tokens=6, eos_token_id=-1)
        assert got[0].tolist() == hf_out[0, inputs["input_ids"].shape[1] :].tolist()


def test_images_use_the_image_tower(parity):
    """An image on Video-LLaVA: its image tower, 256 ([CLS]-less) tokens at 224 px, the shared projector."""
    (tokenizer, ours, processor), _, reference = parity
    pixels = process_images([random_image(3, (90, 70))], processor, ours.config)
    ids = prompt(tokenizer, "Describe the image.", "<image>")
    with torch.no_grad():
        expected = reference(**hf_inputs(reference, ids, pixels=pixels)).logits[0]
        got = ours(ids[None], images=pixels)[0]
    assert (got - expected[:, : got.shape[-1]]).abs().max() < 1e-4


def test_temporal_attention_changes_the_answer_the_hf_port_drops(root, original, clips):
    """The published video tower attends across frames; its -hf conversion runs each frame alone."""
    tokenizer, model, _ = original
    hf = convert_video_llava_to_hf(root / "temporal" / "Video-LLaVA-tiny", root / "temporal-hf")
    _, hf_model, _ = load_pretrained_model(str(hf), device="cpu", pruning=None)[:3]
    ids = prompt(tokenizer, QUESTIONS[0])
    with torch.no_grad():
        ours = model(ids[None], videos=[clips[0]])[0]
        port = hf_model(ids[None], videos=[clips[0]])[0, :, : ours.shape[-1]]
    assert (ours - port).abs().max() > 1e-3


def test_wrong_frame_count_and_image_checkpoints_are_refused(original, clips):
    _, model, _ = original
    with pytest.raises(ValueError, match="num_frames=8"):
        model.model.video_tower(clips[0][:, :4][None])


def _run(model, method, ids, videos):
    model.set_pruning(method)
    try:
        out = model.generate(ids, videos=videos, max_new_tokens=4, eos_token_id=-1)
        return out, model.last_accounts
    finally:
        model.set_pruning(None)


METHODS = {
    "fastv": lambda: FastV(k=1, retained_tokens=40),
    "sparsevlm-1_0": lambda: SparseVLM("1_0", 64, pruning_layers=(1, 2, 3)),
    "sparsevlm-2_0": lambda: SparseVLM("2_0", 64, pruning_layers=(1, 2, 3), priority_heads=2),
    "sparsevlm-video": lambda: SparseVLM("video"),
    "fastervlm": lambda: FasterVLM(None, view_tokens=4),
    "fastervlm-global": lambda: FasterVLMGlobal(32),
    "random": lambda: RandomPruning(64),
    "uniform": lambda: UniformPruning(64),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_batch_of_two_clips_equals_one_by_one(original, clips, name):
    tokenizer, model, _ = original
    ids = [prompt(tokenizer, q) for q in QUESTIONS]
    together, accounts = _run(model, METHODS[name](), ids, clips)
    for i in range(2):
        alone, account = _run(model, METHODS[name](), ids[i][None], [clips[i]])
        assert together[i].tolist() == alone[0].tolist()
        assert (
            accounts[i].as_metadata()["visual_tokens_per_layer"] == account[0].as_metadata()["visual_tokens_per_layer"]
        )
    assert accounts[0].as_metadata()["equal_tokens"] < FRAMES * (PATCHES + 1)  # it pruned


@pytest.mark.parametrize(
    "method",
    [FastV(k=1, retained_tokens=136), RandomPruning(136), UniformPruning(136), FasterVLM(None, view_tokens=16)],
    ids=["fastv", "random", "uniform", "fastervlm"],
)
def test_keeping_everything_equals_unpruned(original, clips, method):
    tokenizer, model, _ = original
    ids = prompt(tokenizer, QUESTIONS[1])[None]
    with torch.no_grad():
        unpruned = model(ids, videos=[clips[1]])
        model.set_pruning(method)
        try:
            pruned = model(ids, videos=[clips[1]])
        finally:
            model.set_pruning(None)
    assert torch.equal(unpruned, pruned)


@pytest.mark.parametrize(
    "method, per_frame",
    [(FasterVLM(None, view_tokens=5), 5), (RandomPruning(64), 8), (UniformPruning(64), 8), (FasterVLM(34), 4)],
    ids=["fastervlm-k5", "random-64", "uniform-64", "fastervlm-34"],
)
def test_per_frame_methods_keep_k_patches_of_every_frame(original, clips, method, per_frame):
    """k per frame, [CLS] dropped (FasterVLM's video branch); a total budget is shared equally (64 of 136 tokens
    -> round(64 / 136 * 16) = 8 of each frame's 16 patches)."""
    tokenizer, model, _ = original
    _, accounts = _run(model, method, prompt(tokenizer, QUESTIONS[0])[None], [clips[0]])
    meta = accounts[0].as_metadata()
    assert meta["visual_tokens_per_view"] == [per_frame] * FRAMES
    assert meta["visual_tokens"] == per_frame * FRAMES


def test_fastervlm_per_frame_keeps_the_top_of_each_frames_cls_attention(original, clips):
    tokenizer, model, _ = original
    model.set_pruning(FasterVLM(None, view_tokens=3))
    try:
        inputs = model.prepare_inputs(prompt(tokenizer, QUESTIONS[0])[None], videos=[clips[0]])
    finally:
        model.set_pruning(None)
    _, cls_rows = model.model.video_tower.forward_with_cls_attention(clips[0][None])
    tokens = inputs.images[0].tokens
    for frame in range(FRAMES):
        kept = tokens.patch[tokens.view == frame].tolist()
        assert kept == sorted(torch.topk(cls_rows[0, frame], 3).indices.tolist())


def test_sparsevlm_video_branch_keeps_rank_of_the_raters_attention(parity, clips):
    """SparseVLM's video branch prunes once, after layer 1, keeping exactly rank(P) tokens, P = the raters'
    attention to the clip averaged over heads; computed here from transformers' eager attention probabilities
    and raters chosen from transformers' input embeddings."""
    (tokenizer, ours, _), _, reference = parity
    ids = prompt(tokenizer, QUESTIONS[1])
    inputs = hf_inputs(reference, ids, clips[1])
    with torch.no_grad():
        out = reference(**inputs, output_attentions=True)
        embeds = reference.get_input_embeddings()(inputs["input_ids"])[0]
        video = reference.model.get_video_features(inputs["pixel_values_videos"], vision_feature_layer=-2)
    start = int((inputs["input_ids"][0] == reference.config.video_token_index).nonzero()[0, 0])
    count = FRAMES * (PATCHES + 1)
    visual = video.pooler_output.reshape(count, -1)
    text = embeds[start + count :]
    relation = (visual @ text.T).softmax(dim=-1).mean(dim=0)
    raters = start + count + torch.nonzero(relation > relation.mean()).flatten()
    probs = out.attentions[1][0][:, raters, start : start + count].mean(dim=0)  # [raters, V]
    rank = int(torch.linalg.matrix_rank(probs))
    expected = torch.topk(probs.mean(dim=0), rank).indices.sort().values

    _, accounts = _run(ours, SparseVLM("video"), ids[None], [clips[1]])
    kept = accounts[0].kept[1]
    assert len(kept) == rank < count
    assert kept.tolist() == expected.tolist()


def test_video_qa_generator_end_to_end_chunked_batched_and_resumed(root, original, tmp_path):
    """model_video_qa on the tiny Video-LLaVA: two chunks merged equal one batched run answer for answer, each
    answer keeps its own question's ground truth, a missing video and a too-short clip fail alone (a short clip
    runs with --repeat-short-videos), and a rerun answers nothing again."""
    from llava.eval import model_video_qa
    from llava.eval.answer_files import read_jsonl
    from llava.eval.answering import chunk_path
    from llava.eval.merge_chunks import merge_chunks

    folder = tmp_path / "MSVD_Zero_Shot_QA"
    (folder / "videos").mkdir(parents=True)
    write_video(folder / "videos" / "v0.mp4", synthetic_frames(20, 96, 64))
    write_video(folder / "videos" / "v1.mkv", synthetic_frames(9, 64, 64))
    write_video(folder / "videos" / "short.mp4", synthetic_frames(5, 64, 64))
    names = ["v0", "v1", "v0", "gone", "short", "v1"]
    questions = [{"video_name": n, "question_id": f"q{i}", "question": f"what is {i}?"} for i, n in enumerate(names)]
    answers = [{"answer": f"gt{i}", "type": 3, "question_id": f"q{i}"} for i in reversed(range(len(names)))]
    (folder / "test_q.json").write_text(json.dumps(questions))
    (folder / "test_a.json").write_text(json.dumps(answers))
    model_path = str(root / "temporal" / "Video-LLaVA-tiny")

    def run(answers_file, *extra):
        model_video_qa.main(
            ["--model-path", model_path, "--video-folder", str(folder / "videos"), "--question-file",
             str(folder / "test_q.json"), "--answer-file", str(folder / "test_a.json"), "--answers-file",
             str(answers_file), "--max_new_tokens", "3", "--device", "cpu", *extra]
        )  # fmt: skip

    batched = tmp_path / "batched.jsonl"
    run(batched, "--batch-size", "3")
    for k in range(2):  # as two processes would (torchrun names the chunk files the same way)
        run(chunk_path(tmp_path / "chunked.jsonl", 2, k), "--num-chunks", "2", "--chunk-idx", str(k))
    merge_chunks(tmp_path / "chunked.jsonl", 2)
    one, two = read_jsonl(batched), read_jsonl(tmp_path / "chunked.jsonl")
    assert [r["question_id"] for r in one] == [r["question_id"] for r in two] == [f"q{i}" for i in range(6)]
    assert [r["text"] for r in one] == [r["text"] for r in two]
    assert all(r["answer"] == "gt" + r["question_id"][1:] for r in one + two)
    failed = {r["question_id"]: r["error"] for r in one if "error" in r}
    assert (
        sorted(failed) == ["q3", "q4"]
        and "FileNotFoundError" in failed["q3"]
        and "5 frame(s), fewer than the 8" in failed["q4"]
    )
    assert one[0]["metadata"]["visual_tokens"] == FRAMES * (PATCHES + 1)

    run(batched, "--repeat-short-videos")  # resumes: every question already answered, nothing regenerated
    assert read_jsonl(batched) == one
    retried = tmp_path / "repeat.jsonl"
    run(retried, "--repeat-short-videos")
    assert "error" not in read_jsonl(retried)[4]


def test_run_llava_answers_about_a_video_file(root, original, clips, capsys):
    """`run_llava --video-file` gives the answer of generate() on the same clip and prompt, and its account."""
    from llava.eval import run_llava

    tokenizer, model, _ = original
    model_path = str(root / "temporal" / "Video-LLaVA-tiny")
    argv = ["--model-path", model_path, "--video-file", str(root / "a.mp4"), "--query", QUESTIONS[0]]
    run_llava.main([*argv, "--temperature", "0", "--max_new_tokens", "5", "--device", "cpu", "--method", "none"])
    printed = capsys.readouterr()
    expected = model.generate(prompt(tokenizer, QUESTIONS[0])[None], videos=[clips[0]], max_new_tokens=5)
    assert printed.out.strip() == tokenizer.batch_decode(expected, skip_special_tokens=True)[0].strip()
    assert "136" in printed.err  # the account line: 8 frames x 17 tokens
