"""Tiny random Video-LLaVA checkpoints in the real on-disk formats, for tests.

`write_tiny_video_llava` writes what `LanguageBind/Video-LLaVA-7B` is: an original-format LLaVA folder
(`mm_image_tower` / `mm_video_tower` naming LanguageBind folders, `.bin` shards that also embed both towers under
`model.image_tower.image_tower.*` / `model.video_tower.video_tower.*`) beside tiny LanguageBind_Image and
LanguageBind_Video_merge folders. `convert_video_llava_to_hf` rewrites it the way transformers' converter
made `LanguageBind/Video-LLaVA-7B-hf`: towers taken from the shards without their temporal layers, `<image>`,
`<video>` and `<pad>` added and the vocabulary padded to a multiple of 64, saved by transformers'
`VideoLlavaForConditionalGeneration` itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.languagebind import CLIP_VISION_FIELDS
from llava.testing.checkpoints import _default_dtype, _pad_rows, _save_shards, tiny_llava_config
from llava.testing.languagebind import video_llava_tower_state, write_tiny_languagebind
from llava.testing.tokenizer import save_tokenizer


def write_tiny_video_llava(
    folder: str | Path,
    image_size: int = 56,
    num_frames: int = 8,
    tower_hidden: int = 32,
    tower_layers: int = 3,
    hidden_size: int = 64,
    num_layers: int = 4,
    seed: int = 0,
    zero_temporal: bool = False,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
    tower_heads: int = 2,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """`folder/Video-LLaVA-tiny` with `folder/LanguageBind_Image` and `folder/LanguageBind_Video_merge` beside
    it (absolute paths in its config); returns the checkpoint folder. `zero_temporal` zeroes the video tower's
    temporal embeddings and temporal attention outputs, so that it computes what a per-frame CLIP does.

    The size parameters give real-size models (benchmarks): `vocab_size` larger than the tiny tokenizer's gives
    real-size embedding and lm_head matrices, `dtype` is that of the checkpoint's shards (the LanguageBind folders
    stay float32; the towers' MLPs are 4 x `tower_hidden` wide, as LanguageBind's)."""
    folder = Path(folder)
    sizes = dict(hidden_size=tower_hidden, num_layers=tower_layers, num_heads=tower_heads, image_size=image_size)
    image = write_tiny_languagebind(folder / "LanguageBind_Image", "image", seed=seed + 1, **sizes)
    video = write_tiny_languagebind(
        folder / "LanguageBind_Video_merge", "video", seed=seed + 2, num_frames=num_frames, **sizes
    )
    if zero_temporal:
        for key, value in video.state.items():
            if key.endswith("temporal_embedding") or ".temporal_attn.out_proj." in key:
                value.zero_()
        torch.save(video.state, video.path / "pytorch_model.bin")

    out = folder / "Video-LLaVA-tiny"
    out.mkdir(parents=True, exist_ok=True)
    vocab = max(save_tokenizer(out), vocab_size or 0)
    config = tiny_llava_config(None, vocab, tower_hidden, hidden_size, num_layers, num_heads, intermediate_size)
    if num_kv_heads:
        config.text_config.num_key_value_heads = num_kv_heads
    config.mm_image_tower = str(image.path.resolve())
    config.mm_video_tower = str(video.path.resolve())
    torch.manual_seed(seed)
    with _default_dtype(dtype):
        model = LlavaLlamaForCausalLM(config)
    with torch.no_grad():  # sharper attention, so that answers depend on the prompt and the frames
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    state = dict(model.state_dict())
    for tower, kind in ((image, "image"), (video, "video")):
        state.update({k: v.to(dtype) for k, v in video_llava_tower_state(tower.state, kind).items()})
    _save_shards(state, out, num_shards=2, safetensors=False)
    raw = config.to_original_dict()
    raw.pop("mm_vision_tower")  # Video-LLaVA's config names only its image and video towers
    raw.update(mm_image_tower=config.mm_image_tower, mm_video_tower=config.mm_video_tower)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
    return out


def convert_video_llava_to_hf(original: str | Path, folder: str | Path, seed: int = 0) -> Path:
    """Rewrite an original-format tiny Video-LLaVA as a -hf folder (transformers' `convert_video_llava_weights_to_hf`
    mapping: the towers come from the shards and lose their temporal tensors, the projector becomes
    `multi_modal_projector.linear_{1,2}`; three tokens added and the vocabulary padded to a multiple of 64)."""
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    from llava.model.checkpoint import iter_tensors, weight_files
    from llava.model.config import LlavaConfig

    original, folder = Path(original), Path(folder)
    config = LlavaConfig.from_pretrained(original)
    vision = json.loads((Path(config.mm_video_tower) / "config.json").read_text())["vision_config"]
    vision = {k: v for k, v in vision.items() if k in CLIP_VISION_FIELDS}
    old_vocab = config.vocab_size
    image_token, video_token, pad_token = old_vocab, old_vocab + 1, old_vocab + 2
    new_vocab = -(-(old_vocab + 3) // 64) * 64
    save_tokenizer(folder, extra_special_tokens=["<image>", "<video>", "<pad>"])
    text = config.text_config.to_dict()
    text.update(vocab_size=new_vocab, pad_token_id=pad_token)
    hf_config = VideoLlavaConfig(
        text_config=text,
        vision_config={**vision, "model_type": "clip_vision_model"},
        image_token_index=image_token,
        video_token_index=video_token,
        pad_token_id=pad_token,
        vision_feature_layer=config.mm_vision_select_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
        video_seq_length=config.num_frames * ((vision["image_size"] // vision["patch_size"]) ** 2 + 1),
        tie_word_embeddings=False,
    )
    model = VideoLlavaForConditionalGeneration(hf_config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in iter_tensors(weight_files(original)):
        if "temporal_" in name or name.endswith("rotary_emb.inv_freq"):
            continue  # the converter loads with strict=False: the temporal layers are dropped silently
        for prefix, target in (
            ("model.image_tower.image_tower.", "model.image_tower."),
            ("model.video_tower.video_tower.", "model.video_tower."),
            ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
            ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
            ("lm_head.", "lm_head."),
            ("model.", "model.language_model."),
        ):
            if name.startswith(prefix):
                name = target + name[len(prefix) :]
                break
        if name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            tensor = _pad_rows(tensor, new_vocab, generator)
        state[name] = tensor
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"conversion left missing {missing[:3]} / unexpected {unexpected[:3]} keys")
    model.save_pretrained(str(folder))
    from llava.model.multimodal_encoder.image_processor import CLIPImagePreprocessor

    CLIPImagePreprocessor(size=vision["image_size"], crop_size=vision["image_size"]).save_pretrained(folder)
    return folder
