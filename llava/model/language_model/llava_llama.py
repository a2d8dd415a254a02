"""LlavaLlamaForCausalLM: a Llama-family decoder (transformers' layers, our loop) with a CLIP tower and projector;
LLaVA-1.5 and LLaVA-NeXT (anyres views, Llama or Mistral decoder) alike."""

from __future__ import annotations

import torch
from torch import nn

from llava.model.config import LlavaConfig
from llava.model.language_model.family import check_sequence_length, family_of
from llava.model.llava_arch import (
    EncodedImage,
    MultimodalInputs,
    encode_images,
    encode_videos,
    splice_image_features,
)
from llava.model.multimodal_projector.builder import build_vision_projector
from llava.model.vlm import VisionLanguageModel, ids_on_device
from llava.sparse.budget import nominal_visual_tokens


class LlavaLlamaModel(nn.Module):
    """Holds the modules under the original checkpoint's `model.` prefix: `embed_tokens`, `layers`, `norm`,
    `mm_projector`, `image_newline` (LLaVA-NeXT's `*unpad` merges only) and, attached by the loader,
    `vision_tower`. The layers are the text family's own transformers classes (Llama, Mistral)."""

    def __init__(self, config: LlavaConfig) -> None:
        super().__init__()
        text = config.text_config
        family = family_of(text)
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size, text.pad_token_id)
        self.layers = nn.ModuleList(family.layer(text, i) for i in range(text.num_hidden_layers))
        self.norm = family.norm(text.hidden_size, eps=text.rms_norm_eps)
        self.rotary_emb = family.rotary(text)
        self.mm_projector = build_vision_projector(config.mm_projector_type, config.mm_hidden_size, text.hidden_size)
        if config.has_image_newline:
            self.image_newline = nn.Parameter(torch.empty(text.hidden_size))
        else:
            self.image_newline = None
        self.vision_tower = None
        self.video_tower = None  # Video-LLaVA's LanguageBind video tower, attached by the loader
        # Per decoder layer, its device when the layers sit on several devices (set by the loader for a device map;
        # None: one device). The decoder loop moves the hidden state between layers that differ.
        self.layer_devices: tuple[torch.device, ...] | None = None

    def _apply(self, fn, recurse=True):
        """`.to()` / `.cuda()` / `.half()`: keep `layer_devices` true to where the layers now are."""
        module = super()._apply(fn, recurse)
        if self.layer_devices is not None:
            devices = tuple(next(layer.parameters()).device for layer in self.layers)
            self.layer_devices = None if len(set(devices)) == 1 else devices
        return module

    def reset_rotary(self, config: LlavaConfig, device: torch.device | str) -> None:
        """Rebuild the (non-persistent) rotary table, e.g. after the model was created on the meta device."""
        with torch.device(device):
            self.rotary_emb = family_of(config.text_config).rotary(config.text_config)


class LlavaLlamaForCausalLM(VisionLanguageModel):
    """LLaVA-1.5 / LLaVA-NeXT for inference. `forward` gives prefill logits; `generate` decodes with a KV cache."""

    def __init__(self, config: LlavaConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__(config, attn_implementation)
        self.model = LlavaLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.video_processor = None  # Video-LLaVA: frames -> pixels, attached by the loader

    def get_vision_tower(self):
        return self.model.vision_tower

    @property
    def nominal_visual_tokens(self) -> int:
        """The visual token count budgets are stated against (`llava.sparse.budget`)."""
        if self.model.video_tower is not None:  # Video-LLaVA: budgets count the whole clip ([CLS] of each frame too)
            video = self.model.video_tower
            return video.num_frames * (video.num_patches + 1)
        tower = self.get_vision_tower()
        return nominal_visual_tokens(self.config, tower.num_patches, tower.config.image_size)

    def load_video(
        self, path, processor=None, num_frames: int | None = None, repeat_short: bool = False, fps=None, max_frames=None
    ):
        """A video file -> the clip `generate(videos=[...])` takes ([3, T, 224, 224]): Video-LLaVA's frame sampling
        and preprocessing (`llava.model.multimodal_encoder.video_processor`), `processor` defaulting to the one the
        loader attached. `fps` / `max_frames` are Qwen-VL's sampling and refused here."""
        if fps is not None or max_frames is not None:
            raise ValueError(
                "Video-LLaVA samples a fixed number of frames (--num-frames); --video-fps and "
                "--max-frames are Qwen-VL's"
            )
        from llava.model.multimodal_encoder.video_processor import VideoLlavaVideoProcessor, read_video_frames

        processor = processor if isinstance(processor, VideoLlavaVideoProcessor) else self.video_processor
        if self.model.video_tower is None or processor is None:
            raise ValueError("This checkpoint takes no videos: load a Video-LLaVA or Qwen2(.5)-VL checkpoint")
        frames = read_video_frames(path, num_frames or self.model.video_tower.num_frames, repeat_short=repeat_short)
        return processor.preprocess(frames)

    # -- building blocks ----------------------------------------------------------------------------------------
    def encode_images(self, images, image_sizes=None) -> list[EncodedImage]:
        """Per image, the projected visual block that enters the LLM (merged views, after any pre-LLM pruning)."""
        if self.model.vision_tower is None:
            raise RuntimeError("This model has no vision tower loaded; load it with load_pretrained_model()")
        return encode_images(self, images, image_sizes, self.pruning)

    def prepare_inputs(
        self,
        input_ids: torch.Tensor | list[torch.Tensor],
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        image_sizes=None,
        videos=None,
    ) -> MultimodalInputs:
        encoded, encoded_videos = None, None
        device = self.input_device
        self.pruning.prepare(self, input_ids)
        if videos is not None:
            if self.model.video_tower is None:
                raise ValueError("This checkpoint has no video tower; videos need a Video-LLaVA checkpoint")
            videos = videos.to(device) if isinstance(videos, torch.Tensor) else [v.to(device) for v in videos]
            encoded_videos = encode_videos(self, videos, self.pruning)
        if images is not None:
            if isinstance(images, torch.Tensor):
                images = images.to(device)
            else:
                images = [image.to(device) for image in images]
            encoded = self.encode_images(images, image_sizes)
        input_ids, attention_mask = ids_on_device(input_ids, attention_mask, device)
        features = None if encoded is None else [image.features for image in encoded]
        video_features = None if encoded_videos is None else [video.features for video in encoded_videos]
        inputs = splice_image_features(
            input_ids,
            attention_mask,
            features,
            self.model.embed_tokens,
            self.config.tokenizer_model_max_length,
            video_features,
        )
        inputs.images = None if encoded is None and encoded_videos is None else (encoded or []) + (encoded_videos or [])
        check_sequence_length(self.config.text_config, max(inputs.lengths))
        return inputs
