"""LanguageBind towers (llava.model.multimodal_encoder.languagebind) against transformers' CLIP and against a
plain-PyTorch reference of spec video.md §1.2 written here, on tiny folders in the published on-disk format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.checkpoint import MissingWeightsError
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.multimodal_encoder.languagebind import (
    LanguageBindVideoTower,
    languagebind_video_tower_from_state,
    load_languagebind_image_tower,
    load_languagebind_video_tower,
)
from llava.testing.languagebind import (
    VIDEO_LLAVA_TOWER_PREFIXES,
    languagebind_config,
    languagebind_state,
    video_llava_tower_state,
    write_tiny_languagebind_image,
    write_tiny_languagebind_video,
)

FRAMES = 8


def _vision(state: dict) -> dict:
    return {k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")}


def _videos(config: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = config["vision_config"]["image_size"]
    return torch.randn(batch, 3, FRAMES, size, size, generator=torch.Generator().manual_seed(seed))


def _frames(videos: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = videos.shape
    return videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


# --- Plain-PyTorch reference of the LanguageBind vision transformer (spec §1.2) ----------------------------------


def _ln(x: torch.Tensor, s: dict, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"], eps)


def _linear(x: torch.Tensor, s: dict, name: str) -> torch.Tensor:
    return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]


def _attention(x: torch.Tensor, s: dict, name: str, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked multi-head attention over dim 1 of x [S, L, D]: (output [S, L, D], probabilities [S, h, L, L])."""
    seqs, length, dim = x.shape
    hd = dim // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(seqs, length, heads, hd).transpose(1, 2)

    q, k, v = (split(_linear(x, s, f"{name}.{p}_proj")) for p in "qkv")
    probs = (q @ k.transpose(-1, -2) * hd**-0.5).softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(seqs, length, dim)
    return _linear(out, s, f"{name}.out_proj"), probs


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return 0.5 * x * (1 + torch.erf(x / 2**0.5))
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    raise ValueError(name)


def reference(videos: torch.Tensor, s: dict, cfg: dict, temporal: bool = True) -> tuple[list, list]:
    """Hidden states ([B, T, N, D]: embeddings after pre_layrnorm, then each layer) and each layer's spatial
    attention probabilities ([B*T, h, N, N]) of the LanguageBind vision tower with weights `s` (no prefix)."""
    b, _, t, _, _ = videos.shape
    eps, heads, patch = cfg["layer_norm_eps"], cfg["num_attention_heads"], cfg["patch_size"]
    patches = F.conv2d(_frames(videos), s["embeddings.patch_embedding.weight"], stride=patch)  # [BT, D, g, g]
    patches = patches.flatten(2).transpose(1, 2)
    cls = s["embeddings.class_embedding"].expand(b * t, 1, -1)
    x = torch.cat([cls, patches], dim=1) + s["embeddings.position_embedding.weight"]
    x = _ln(x, s, "pre_layrnorm", eps)
    n, d = x.shape[1:]
    hidden, probs = [x.view(b, t, n, d)], []
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layers.{i}"
        if temporal:  # each token position attends over the T frames of its own video
            y = x.view(b, t, n, d).transpose(1, 2) + s[f"{p}.temporal_embedding"]  # [B, N, T, D]
            y = y.reshape(b * n, t, d)
            mixed, _ = _attention(_ln(y, s, f"{p}.temporal_layer_norm1", eps), s, f"{p}.temporal_attn", heads)
            x = (y + mixed).view(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)
        out, p_spatial = _attention(_ln(x, s, f"{p}.layer_norm1", eps), s, f"{p}.self_attn", heads)
        x = x + out
        x = x + _linear(
            _act(cfg["hidden_act"], _linear(_ln(x, s, f"{p}.layer_norm2", eps), s, f"{p}.mlp.fc1")), s, f"{p}.mlp.fc2"
        )
        hidden.append(x.view(b, t, n, d))
        probs.append(p_spatial)
    return hidden, probs


# --- Fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    return write_tiny_languagebind_video(tmp_path_factory.mktemp("lb") / "LanguageBind_Video_merge", seed=3)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_tiny_languagebind_image(tmp_path_factory.mktemp("lb") / "LanguageBind_Image", seed=4)


# --- (a) temporal parts off: per-frame CLIP ------------------------------------------------------------------


def test_zero_temporal_block_is_per_frame_clip():
    config = languagebind_config("video", num_layers=3)
    state = _vision(languagebind_state(config, seed=0))
    for i in range(3):
        state[f"encoder.layers.{i}.temporal_embedding"] = torch.zeros_like(
            state[f"encoder.layers.{i}.temporal_embedding"]
        )
        for part in ("weight", "bias"):
            key = f"encoder.layers.{i}.temporal_attn.out_proj.{part}"
            state[key] = torch.zeros_like(state[key])
    tower = languagebind_video_tower_from_state(config["vision_config"], state)

    vision = config["vision_config"]
    clip = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})).eval()
    clip.load_state_dict({k: v for k, v in state.items() if ".temporal_" not in k and "position_ids" not in k})

    videos = _videos(config)
    with torch.no_grad():
        per_frame = clip(pixel_values=_frames(videos), output_hidden_states=True).hidden_states[-2]
    features = tower(videos)
    assert features.shape == (2, FRAMES, 5, 32)
    torch.testing.assert_close(features, per_frame.view(2, FRAMES, 5, 32), rtol=0, atol=1e-6)


# --- (b) temporal parts on: the spec's formulas --------------------------------------------------------------


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu"])
def test_video_tower_matches_reference(hidden_act):
    config = languagebind_config("video", num_layers=3, hidden_act=hidden_act)
    state = _vision(languagebind_state(config, seed=1))
    videos = _videos(config)
    hidden, _ = reference(videos, state, config["vision_config"])

    tower = languagebind_video_tower_from_state(config["vision_config"], state)
    assert len(tower.vision_tower.encoder.layers) == 2  # layer -2 of 3: the last layer is dropped
    torch.testing.assert_close(tower(videos), hidden[-2], rtol=0, atol=1e-5)

    # Every hidden state of the untruncated model, the embeddings included, in Video-LLaVA's (B, T, N, D) order.
    full = languagebind_video_tower_from_state(config["vision_config"], state, truncate=False)
    with torch.no_grad():
        out = full.vision_tower(pixel_values=_frames(videos), output_hidden_states=True)
    assert len(out.hidden_states) == 4
    for ours, ref in zip(out.hidden_states, hidden, strict=True):
        torch.testing.assert_close(ours.view(ref.shape), ref, rtol=0, atol=1e-5)

    # The features keep the caller's dtype, as LLaVA's towers do.
    assert tower(videos.to(torch.bfloat16)).dtype == torch.bfloat16


# --- (c) [CLS] attention rows --------------------------------------------------------------------------------


def test_cls_attention_rows_match_eager_attentions():
    config = languagebind_config("video", num_layers=3)
    state = _vision(languagebind_state(config, seed=2))
    videos = _videos(config)
    tower = languagebind_video_tower_from_state(config["vision_config"], state)
    features, cls_row = tower.forward_with_cls_attention(videos)
    torch.testing.assert_close(features, tower(videos), rtol=0, atol=0)
    assert cls_row.shape == (2, FRAMES, 4) and cls_row.dtype == torch.float32

    eager = languagebind_video_tower_from_state(
        config["vision_config"], state, attn_implementation="eager", truncate=False
    )
    assert eager.vision_tower.config._attn_implementation == "eager"
    with torch.no_grad():
        attentions = eager.vision_tower(pixel_values=_frames(videos), output_attentions=True).attentions
    assert len(attentions) == 3  # spatial maps only, one per layer, as the original returns
    expected = attentions[tower.num_layers_used - 1][:, :, 0, 1:].mean(dim=1).view(2, FRAMES, 4)
    torch.testing.assert_close(cls_row, expected, rtol=0, atol=1e-6)

    _, probs = reference(videos, state, config["vision_config"])
    ref_row = probs[tower.num_layers_used - 1][:, :, 0, 1:].mean(dim=1).view(2, FRAMES, 4)
    torch.testing.assert_close(cls_row, ref_row, rtol=0, atol=1e-5)


# --- (d) the folders and the Video-LLaVA checkpoint route ----------------------------------------------------


def test_video_folder_matches_state_route(tmp_path):
    tiny = write_tiny_languagebind_video(tmp_path / "LanguageBind_Video_merge", image_size=224, seed=5)
    assert {p.name for p in tiny.path.iterdir()} == {"config.json", "pytorch_model.bin"}
    assert any(k.startswith("text_model.") for k in tiny.state)  # the loader must skip the text tower
    tower = load_languagebind_video_tower(tiny.path)
    assert isinstance(tower, LanguageBindVideoTower)
    assert (tower.num_frames, tower.num_patches_per_side, tower.num_patches, tower.hidden_size) == (8, 16, 256, 32)

    # A Video-LLaVA checkpoint stores the same tensors under model.video_tower.video_tower.
    prefix = VIDEO_LLAVA_TOWER_PREFIXES["video"]
    embedded = video_llava_tower_state(tiny.state, "video")
    assert f"{prefix}encoder.layers.1.temporal_layer_norm1.weight" in embedded
    stripped = {k[len(prefix) :]: v for k, v in embedded.items()}
    from_state = languagebind_video_tower_from_state(tiny.vision_config, stripped)

    videos = torch.randn(1, 3, FRAMES, 224, 224, generator=torch.Generator().manual_seed(0))
    features = tower(videos)
    assert features.shape == (1, FRAMES, 257, 32)  # [CLS] kept: 8 x 257 = 2056 tokens per video
    torch.testing.assert_close(features, from_state(videos), rtol=0, atol=0)
    hidden, _ = reference(videos, tiny.vision_state(), tiny.vision_config)
    torch.testing.assert_close(features, hidden[-2], rtol=0, atol=1e-5)


def test_image_folder_loads_as_clip_tower(tmp_path):
    tiny = write_tiny_languagebind_image(tmp_path / "LanguageBind_Image", image_size=224, seed=6)
    tower = load_languagebind_image_tower(tiny.path)
    assert isinstance(tower, CLIPVisionTower) and tower.num_patches == 256
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    features = tower(images)
    assert features.shape == (2, 256, 32)  # [CLS] dropped
    hidden, _ = reference(images[:, :, None], tiny.vision_state(), tiny.vision_config, temporal=False)
    torch.testing.assert_close(features, hidden[-2][:, 0, 1:], rtol=0, atol=1e-5)
    assert video_llava_tower_state(tiny.state, "image").keys() == {
        VIDEO_LLAVA_TOWER_PREFIXES["image"] + k for k in tiny.vision_state() if not k.endswith("position_ids")
    }


def test_folder_config_activation_is_honoured(tmp_path):
    quick = write_tiny_languagebind_video(tmp_path / "quick", hidden_act="quick_gelu", seed=7)
    tower = load_languagebind_video_tower(quick.path)
    assert tower.config.hidden_act == "quick_gelu"
    videos = _videos(quick.config)
    hidden, _ = reference(videos, quick.vision_state(), quick.vision_config)
    torch.testing.assert_close(tower(videos), hidden[-2], rtol=0, atol=1e-5)


# --- (e) errors that say what to do ---------------------------------------------------------------------------


def test_wrong_frame_count(video_folder):
    tower = load_languagebind_video_tower(video_folder.path)
    with pytest.raises(ValueError, match="exactly num_frames=8 frames"):
        tower(torch.randn(1, 3, 4, 28, 28))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        tower(torch.randn(8, 3, 28, 28))
    with pytest.raises(ValueError, match="disagrees with the stored temporal_embedding"):
        languagebind_video_tower_from_state(video_folder.vision_config, video_folder.vision_state(), num_frames=4)


def test_missing_folder_and_files(tmp_path, video_folder):
    with pytest.raises(FileNotFoundError, match="hf download LanguageBind/LanguageBind_Video_merge"):
        load_languagebind_video_tower(tmp_path / "nowhere")
    (tmp_path / "no_config").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_languagebind_video_tower(tmp_path / "no_config")
    bare = tmp_path / "no_weights"
    bare.mkdir()
    (bare / "config.json").write_text((video_folder.path / "config.json").read_text())
    with pytest.raises(MissingWeightsError, match="pytorch_model.bin"):
        load_languagebind_video_tower(bare)
    with pytest.raises(FileExistsError):
        write_tiny_languagebind_video(video_folder.path)


def test_missing_temporal_weights(video_folder):
    state = video_folder.vision_state()
    spatial = {k: v for k, v in state.items() if ".temporal_" not in k}
    with pytest.raises(ValueError, match="no temporal weights.*-hf conversion"):
        languagebind_video_tower_from_state(video_folder.vision_config, spatial)
    del state["encoder.layers.1.temporal_attn.q_proj.weight"]
    with pytest.raises(ValueError, match="lacks 1 vision tower weights, e.g. encoder.layers.1.temporal_attn"):
        languagebind_video_tower_from_state(video_folder.vision_config, state)


def test_towers_refuse_each_others_folders(video_folder, image_folder):
    with pytest.raises(ValueError, match="load_languagebind_video_tower"):
        load_languagebind_image_tower(video_folder.path)
    with pytest.raises(ValueError, match="add_time_attn=false"):
        load_languagebind_video_tower(image_folder.path)
