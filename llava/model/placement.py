"""Where a model's modules live: one device, or whole decoder layers spread over several by a device map.

The vision tower, projector, embed_tokens and image_newline live with the first decoder layer, norm and lm_head
with the last; the decoder loop moves the hidden state between devices (`llava.model.language_model.decoder`).
A dict map (module name -> device) is followed as given; a strategy ("auto" = "balanced", "balanced_low_0",
"sequential") lets accelerate spread whole layers when several CUDA devices (or `max_memory`) are given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

logger = logging.getLogger(__name__)

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_LAST_MODULES = ("model.norm", "lm_head")  # go with the last decoder layer; everything else with the first


@dataclasses.dataclass(frozen=True)
class Placement:
    """The device of every decoder layer. The modules that run before the first layer (vision tower, projector,
    embed_tokens, image_newline, rotary table) live with it, norm and lm_head with the last one."""

    layers: tuple[torch.device, ...]

    @property
    def first(self) -> torch.device:
        return self.layers[0]

    @property
    def last(self) -> torch.device:
        return self.layers[-1]

    @property
    def single(self) -> bool:
        return all(device == self.first for device in self.layers)

    def device_of(self, name: str) -> torch.device:
        """Device of the parameter or module `name` (e.g. `model.layers.3.mlp.up_proj.weight`)."""
        match = re.match(r"model\.layers\.(\d+)(\.|$)", name)
        if match:
            return self.layers[int(match.group(1))]
        if any(_covers(module, name) for module in _LAST_MODULES):
            return self.last
        return self.first

    def module_map(self, model) -> dict[str, torch.device]:
        """module name -> device for every top-level module of `model`, decoder layers one by one."""
        names = [name for name, _ in model.model.named_children() if name != "layers"]
        if getattr(model.model, "image_newline", None) is not None:
            names.append("image_newline")
        if "vision_tower" not in names:
            names.append("vision_tower")
        out = {f"model.{name}": self.device_of(f"model.{name}") for name in names}
        out.update({f"model.layers.{i}": device for i, device in enumerate(self.layers)})
        out["lm_head"] = self.last
        return out


def _covers(key: str, name: str) -> bool:
    """Whether device-map entry `key` covers module or parameter `name` (itself or something inside it)."""
    return key == "" or name == key or name.startswith(key + ".")


def _map_device(value, where: str) -> torch.device:
    """A device-map value (an int is a CUDA index, as in accelerate) as a checked torch.device."""
    if isinstance(value, str) and value in ("disk", "meta"):
        raise ValueError(
            f"device_map puts {where} on {value!r}: offloading weights to {value} is not supported; map every "
            "layer to a GPU or 'cpu' (or give the strategy more max_memory)"
        )
    try:
        device = torch.device(f"cuda:{value}" if isinstance(value, int) else value)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device_map puts {where} on {value!r}, which is not a device (use e.g. 0, 'cuda:1' or 'cpu')"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device_map puts {where} on {device}, but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device_map puts {where} on {device}, but torch sees only {torch.cuda.device_count()} CUDA devices"
            )
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device_map puts {where} on {device}; use CUDA devices or 'cpu'")
    return device


def placement_from_map(model: LlavaLlamaForCausalLM, device_map: dict) -> Placement:
    """The placement a user's device map (module name -> device) asks for, or a clear error when it names
    modules this model does not have, splits a decoder layer, leaves layers out, or puts a module elsewhere than
    the layer it must go with."""
    num_layers = len(model.model.layers)
    known = {name for name, _ in model.named_modules()} | {name for name, _ in model.named_parameters()}
    known |= {"", "model.vision_tower", "model.image_newline"}
    for key in device_map:
        in_tower = isinstance(key, str) and key.startswith("model.vision_tower.")
        if not isinstance(key, str) or not (in_tower or any(_covers(key, name) for name in known)):
            raise ValueError(
                f"device_map names {key!r}, which is not a module of this model; use names like 'model.embed_tokens', "
                f"'model.layers.0' ... 'model.layers.{num_layers - 1}', 'model.norm', 'lm_head' (or 'model.layers' "
                "for all layers)"
            )
        inside = re.match(r"model\.layers\.\d+\.", key)
        if inside:
            raise ValueError(
                f"device_map entry {key!r} splits a decoder layer; map whole layers ({inside.group(0)[:-1]!r})"
            )
    layers, missing = [], []
    for i in range(num_layers):
        name = f"model.layers.{i}"
        keys = [key for key in device_map if _covers(key, name)]
        if not keys:
            missing.append(name)
            continue
        key = max(keys, key=len)
        layers.append(_map_device(device_map[key], name))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ValueError(
            f"device_map gives no device for {shown}; map every decoder layer (model.layers.0 ... "
            f"model.layers.{num_layers - 1}, or 'model.layers' as a whole)"
        )
    placement = Placement(tuple(layers))
    for key, value in device_map.items():
        if any(_covers(key, f"model.layers.{i}") for i in range(num_layers)):
            continue  # a layer, or a group that holds layers (its other modules follow the layers)
        device, expected = _map_device(value, key), placement.device_of(key)
        if device != expected:
            which = "last" if any(_covers(module, key) for module in _LAST_MODULES) else "first"
            raise ValueError(
                f"device_map puts {key} on {device}, but it goes with the {which} decoder layer ({expected}): the "
                "vision tower, projector, embed_tokens and image_newline live with the first layer, norm and lm_head "
                "with the last. Drop the entry or move it."
            )
    return placement


def placement_from_strategy(
    model: LlavaLlamaForCausalLM, strategy: str, max_memory: dict | None, dtype: torch.dtype
) -> Placement:
    """Whole decoder layers spread over the devices by accelerate (`balanced` = `auto`: even use of the GPUs;
    `balanced_low_0`: less on GPU 0; `sequential`: fill GPU 0 first), computed on the meta model."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    no_split = [type(model.model.layers[0]).__name__]
    if strategy != "sequential":
        max_memory = get_balanced_memory(
            model,
            max_memory=max_memory,
            no_split_module_classes=no_split,
            dtype=dtype,
            low_zero=strategy == "balanced_low_0",
        )
    auto_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    layers = []
    for i in range(len(model.model.layers)):
        name = f"model.layers.{i}"
        key = max((key for key in auto_map if _covers(key, name)), key=len)
        layers.append(_map_device(auto_map[key], name))
    placement = Placement(tuple(layers))
    if any(device.type == "cpu" for device in layers) and not all(device.type == "cpu" for device in layers):
        logger.warning("The GPUs' max_memory does not hold the model: some decoder layers will run on the CPU")
    return placement


def resolve_placement(
    model: LlavaLlamaForCausalLM,
    device_map,
    device: str | torch.device,
    target: torch.device,
    max_memory: dict | None,
    dtype_hint: str | torch.dtype | None,
) -> Placement:
    """Where the layers go. A dict map is followed as given. A strategy (auto, balanced, balanced_low_0,
    sequential) spreads the layers when `max_memory` is given, or when more than one CUDA device is visible and
    `device` names no particular one (auto or cuda); otherwise, and for None, everything goes on `target`."""
    num_layers = len(model.model.layers)
    if isinstance(device_map, str) and device_map.lstrip().startswith("{"):
        device_map = parse_device_map(device_map)
    if isinstance(device_map, dict):
        return placement_from_map(model, device_map)
    if device_map is not None and device_map not in DEVICE_MAP_STRATEGIES:
        raise ValueError(
            f"device_map must be a dict (module name -> device), None or one of {', '.join(DEVICE_MAP_STRATEGIES)}; "
            f"got {device_map!r}"
        )
    spread = max_memory is not None or (torch.cuda.device_count() > 1 and str(device) in ("auto", "cuda"))
    if device_map is None or not spread:
        return Placement((target,) * num_layers)
    if max_memory is not None:
        max_memory = {_cuda_index(key): value for key, value in max_memory.items()}
    from llava.model.builder import resolve_dtype

    dtype = resolve_dtype(dtype_hint, torch.device("cuda") if torch.cuda.is_available() else target)
    return placement_from_strategy(model, device_map, max_memory, dtype)


def _cuda_index(value):
    """A digit string as an int (a CUDA index, as accelerate writes them); anything else as it is."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _json_object(text: str, flag: str, what: str) -> dict:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} is not valid JSON ({err}); give an object {what}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{flag} must be a JSON object {what}")
    return raw


def parse_device_map(text: str | None):
    """A --device-map value: None, a strategy name, or a JSON object (module name -> device; integers or
    digit strings are CUDA indices)."""
    if text is None or not text.lstrip().startswith("{"):
        return text
    raw = _json_object(text, "--device-map", "module -> device (or a strategy name)")
    return {key: _cuda_index(value) for key, value in raw.items()}


def parse_max_memory(text: str | None) -> dict | None:
    """A --max-memory value: JSON object device -> size, e.g. '{"0": "30GiB", "1": "40GiB", "cpu": "100GiB"}'."""
    if text is None:
        return None
    raw = _json_object(text, "--max-memory", 'device -> size, e.g. \'{"0": "30GiB"}\'')
    return {_cuda_index(key): value for key, value in raw.items()}
