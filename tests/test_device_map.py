"""A model spread over several devices by a device map: whole decoder layers per device, the hidden state moved
between them by the decoder loop, the same tokens as on one device.

A CPU machine has one real device, and torch gives no second computable one: `meta` computes nothing, and
`cpu:1` is a valid `torch.device` whose tensors are plain CPU tensors. So these tests make `cpu:1` and `cpu:2`
separate devices in behaviour: `VirtualDevices` (a torch function mode) gives every tensor a device (a model's
parameters the one its device map gives them, a new tensor the one of its inputs or of its `device=` argument,
`.to(d)` a copy on d), makes `tensor.device` report it, and raises, as CUDA does, when an operation mixes tensors
of two devices (as in torch, a 0-d CPU tensor may join any operation, CPU indices may index any tensor, and copies
and assignments may cross devices). The model lives on `cpu:1` and `cpu:2` only, never on the host `cpu`, so a
missing move anywhere (hidden state, positions, masks, rotary tables, cache entries, a pruning plan's row request,
the next token's id) fails like it would on two GPUs, and the moves the loop makes are recorded.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map_only

from llava.model import builder
from llava.model.builder import load_pretrained_model
from llava.model.language_model import decoder
from llava.model.placement import parse_device_map, parse_max_memory, placement_from_strategy
from llava.model_args import add_model_args, load_from_args
from llava.sparse.sparsevlm import SparseVLM

from .helpers import pixels, prompt_ids, random_image

HOST = torch.device("cpu")
A, B = torch.device("cpu", 1), torch.device("cpu", 2)


def _device(value) -> torch.device:
    device = torch.device(value)
    return HOST if device.type == "cpu" and device.index in (None, 0) else device


class VirtualDevices(TorchFunctionMode):
    """`cpu:N` tensors as if on separate devices (see the module docstring). `moves` lists (source, target,
    tensor) for every copy between two devices."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[torch.device, torch.device, torch.Tensor]] = []

    @staticmethod
    def device_of(tensor: torch.Tensor) -> torch.device:
        return getattr(tensor, "_virtual_device", None) or HOST

    @staticmethod
    def put(tensor: torch.Tensor, device: torch.device) -> None:
        tensor._virtual_device = None if device == HOST else device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__" and getattr(func, "__self__", None) is torch._C.TensorBase.device:
            return self.device_of(args[0])
        if name in ("to", "cpu"):
            return self._move(func, args, kwargs)
        if name in ("__getitem__", "__setitem__"):  # indices may be on the host; a new value is copied over
            index = [t for t in tree_flatten(args[1])[0] if isinstance(t, torch.Tensor) and self.device_of(t) != HOST]
            checked = (args[0], index)
        else:
            checked = (args[0],) if name == "copy_" else (args, kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {
            self.device_of(t)
            for t in tree_flatten(checked)[0]
            if isinstance(t, torch.Tensor) and not (t.dim() == 0 and self.device_of(t) == HOST)
        }
        if len(devices) > 1:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found {sorted(map(str, devices))} in {name}"
            )
        if kwargs.get("device") is not None:
            device = _device(kwargs["device"])
        elif devices:
            device = devices.pop()
        else:
            device = HOST
        out = func(*args, **kwargs)
        seen = {id(t) for t in inputs}

        def tag(tensor):
            if id(tensor) not in seen:  # a new tensor (an in-place result keeps its device)
                self.put(tensor, device)
            return tensor

        return tree_map_only(torch.Tensor, tag, out)

    def _move(self, func, args, kwargs):
        tensor = args[0]
        source = self.device_of(tensor)
        if func.__name__ == "cpu":
            target = HOST
        else:
            target = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
            target = source if target is None else _device(target)
        out = func(*args, **kwargs)
        if target == source:
            if out is not tensor:
                self.put(out, source)
            return out
        if out is tensor:  # same real device: the copy must still be a tensor of its own
            out = out.clone()
        self.put(out, target)
        self.moves.append((source, target, out))
        return out

    def hidden_moves(self, hidden_size: int) -> list[tuple[torch.device, torch.device]]:
        """The moves of hidden states ([B, L, D] floats) between the model's devices."""
        return [
            (src, dst)
            for src, dst, t in self.moves
            if HOST not in (src, dst) and t.dim() == 3 and t.is_floating_point() and t.shape[-1] == hidden_size
        ]


def place_virtually(model, device_map: dict[str, torch.device]) -> None:
    """Give every parameter and buffer of `model` the device its module has in `device_map`."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        key = max((k for k in device_map if k in ("", name) or name.startswith(k + ".")), key=len)
        VirtualDevices.put(tensor, device_map[key])


def split_map(devices) -> dict[str, torch.device]:
    """A device map placing layer i on devices[i] (the modules around the layers follow by the builder's rule)."""
    return {f"model.layers.{i}": device for i, device in enumerate(devices)}


def _load(path, device_map=None, **kwargs):
    return load_pretrained_model(str(path), device="cpu", pruning=None, device_map=device_map, **kwargs)


@pytest.fixture(scope="module")
def sample(loaded):
    tokenizer, model, image_processor, _ = loaded
    ids = [prompt_ids(tokenizer, q) for q in ("What is the color of the circle?", "How many shapes? Answer briefly.")]
    return ids, pixels(image_processor, model, random_image(3), random_image(4))


def test_a_device_map_places_whole_layers_and_the_modules_around_them(tiny_llava):
    _, model, _, _ = _load(tiny_llava, {"model.layers": A, "model.layers.2": B, "model.layers.3": "cpu:2"})
    assert model.model.layer_devices == (A, A, B, B)
    assert model.device_map == {
        "model.embed_tokens": A,
        "model.norm": B,
        "model.rotary_emb": A,
        "model.mm_projector": A,
        "model.vision_tower": A,
        "model.layers.0": A,
        "model.layers.1": A,
        "model.layers.2": B,
        "model.layers.3": B,
        "lm_head": B,
    }
    with VirtualDevices():
        place_virtually(model, model.device_map)
        assert model.input_device == A and model.device == B
        assert model.get_vision_tower().device == A


def test_one_device_is_todays_placement(tiny_llava):
    """device_map "auto" (the default) or None on a CPU machine, or a map naming one device: no layer devices, no
    moves, the loop's moving helpers never called."""
    for device_map in ("auto", None, {"model": "cpu"}):
        _, model, _, _ = _load(tiny_llava, device_map)
        assert model.model.layer_devices is None and model.device_map is None
    _, model, _, _ = _load(tiny_llava, "auto", max_memory={"cpu": "1GiB"})  # accelerate's map: all on the CPU
    assert model.model.layer_devices is None


def _generate_both(ref, split, ids, px, **kwargs):
    """Greedy tokens of the one-device model, and of the split model run on virtual devices (with its moves)."""
    expected = ref.generate(ids, images=px, max_new_tokens=6, **kwargs)
    with VirtualDevices() as devices:
        place_virtually(split, split.device_map)
        got = split.generate(ids, images=px, max_new_tokens=6, **kwargs)
        assert VirtualDevices.device_of(got) == split.device_map["lm_head"]
    return expected, got, devices


@pytest.mark.parametrize("layout", ["halves", "alternating"])
def test_split_model_gives_the_same_logits_and_tokens(tiny_llava, loaded, sample, layout):
    _, ref, _, _ = loaded
    devices = [A, A, B, B] if layout == "halves" else [A, B, A, B]
    _, split, _, _ = _load(tiny_llava, split_map(devices))
    ids, px = sample
    expected = ref(ids[0][None], images=px[:1])
    with VirtualDevices() as moves:
        place_virtually(split, split.device_map)
        got = split(ids[0][None], images=px[:1])
    assert torch.equal(got, expected)
    transitions = [(a, b) for a, b in zip(devices, devices[1:], strict=False) if a != b]
    assert moves.hidden_moves(split.config.hidden_size) == transitions  # layer by layer, once per change

    # batched, left-padded, with the KV cache: every decode step crosses the same devices
    padded = torch.nn.utils.rnn.pad_sequence([x.flip(0) for x in ids], batch_first=True, padding_value=0).flip(1)
    mask = torch.nn.utils.rnn.pad_sequence(
        [torch.ones_like(x, dtype=torch.bool).flip(0) for x in ids], batch_first=True
    ).flip(1)
    expected, got, moves = _generate_both(ref, split, padded, px, attention_mask=mask)
    assert torch.equal(got, expected)
    steps = expected.shape[1]  # a prefill and steps - 1 decode steps
    assert moves.hidden_moves(split.config.hidden_size) == transitions * steps
    # each decode step's token ids go back from lm_head's device to embed_tokens'
    back = [(s, d) for s, d, t in moves.moves if t.dtype == torch.long and t.dim() == 1 and (s, d) == (B, A)]
    assert len(back) == steps - 1


@pytest.mark.parametrize("layout,version", [("halves", "1_0"), ("alternating", "1_0"), ("alternating", "2_0")])
def test_sparsevlm_on_a_split_model_prunes_and_generates_the_same(tiny_llava_32, loaded32, layout, version):
    """SparseVLM v1.5 (pruning after layers 2, 6 and 15, recycling, renumbered positions) with its pruning layers on
    both devices: the rebuilt sequence lives where its layer is, and the next layer's device takes it from there."""
    tokenizer, ref, image_processor, _ = loaded32
    devices = [A] * 5 + [B] * 27 if layout == "halves" else [A if i % 2 == 0 else B for i in range(32)]
    assert {devices[2], devices[6], devices[15]} == {A, B}
    _, split, _, _ = _load(tiny_llava_32, split_map(devices))
    ids = prompt_ids(tokenizer, "What is the color of the circle?")[None]
    px = pixels(image_processor, ref, random_image(7))
    ref.set_pruning(SparseVLM(version, 64))
    split.set_pruning(SparseVLM(version, 64))
    try:
        expected, got, moves = _generate_both(ref, split, ids, px)
        expected_accounts, got_accounts = ref.last_accounts, split.last_accounts
    finally:
        ref.set_pruning(None)
    assert torch.equal(got, expected)
    assert got_accounts[0].visual_after_layer == expected_accounts[0].visual_after_layer
    assert got_accounts[0].visual_schedule() == expected_accounts[0].visual_schedule()
    assert got_accounts[0].visual_schedule()[-1] < 576  # it did prune
    transitions = [(a, b) for a, b in zip(devices, devices[1:], strict=False) if a != b]
    assert moves.hidden_moves(split.config.hidden_size) == transitions * expected.shape[1]


def test_the_single_device_loop_moves_nothing(tiny_llava_32, monkeypatch):
    """All layers on one (non-host) device: the loop never calls its moving helpers, nothing crosses devices."""

    def refuse(*args, **kwargs):
        raise AssertionError("the single-device loop moved something")

    _, model, image_processor, _ = load_pretrained_model(str(tiny_llava_32), device="cpu:1", pruning=None)
    tokenizer = builder.load_tokenizer(tiny_llava_32)
    assert model.model.layer_devices is None
    monkeypatch.setattr(decoder, "move_state", refuse)
    monkeypatch.setattr(decoder, "move_request", refuse)
    model.set_pruning(SparseVLM("1_0", 64))
    ids = prompt_ids(tokenizer, "What is the color of the circle?")[None]
    with VirtualDevices() as devices:
        place_virtually(model, {"": A})
        model.generate(ids, images=pixels(image_processor, model, random_image(7)), max_new_tokens=4)
    # only the inputs (host -> device) and the engine's bookkeeping (kept indices, device -> host)
    assert all(HOST in (src, dst) for src, dst, _ in devices.moves)


def test_virtual_devices_catch_a_missing_move(tiny_llava, loaded, sample, monkeypatch):
    """The check has teeth: a loop that does not move, or moves the hidden state but not the positions and masks,
    fails on the split model as it would on two GPUs."""
    _, split, _, _ = _load(tiny_llava, split_map([A, A, B, B]))
    ids, px = sample
    with VirtualDevices():
        place_virtually(split, split.device_map)
        monkeypatch.setattr(decoder, "layer_devices", lambda text_model: None)
        with pytest.raises(RuntimeError, match="same device"):
            split(ids[0][None], images=px[:1])
        monkeypatch.undo()
        hidden_only = lambda state, hidden, device, move: dataclasses.replace(state, hidden_states=hidden.to(device))  # noqa: E731
        monkeypatch.setattr(decoder, "move_state", hidden_only)
        with pytest.raises(RuntimeError, match="same device"):
            split(ids[0][None], images=px[:1])


def test_moving_the_whole_model_makes_it_single_device_again(tiny_llava):
    _, model, _, _ = _load(tiny_llava, split_map([A, A, B, B]))
    model.to("cpu")
    assert model.model.layer_devices is None


@pytest.mark.parametrize(
    ("device_map", "message"),
    [
        ({"model.layers": "cpu", "model.layer.3": "cpu"}, "'model.layer.3', which is not a module of this model"),
        ({"language_model.model.layers": 0}, "not a module of this model"),
        ({"model.layers.0": "cpu", "model.layers.1": "cpu"}, r"no device for model\.layers\.2, model\.layers\.3"),
        ({"model.layers": "cpu", "model.layers.1.mlp": "cpu"}, "splits a decoder layer"),
        ({"model.layers": A, "model.layers.3": B, "lm_head": A}, "lm_head on cpu:1, but it goes with the last"),
        ({"model.layers": A, "model.layers.0": B, "model.embed_tokens": A}, "goes with the first decoder layer"),
        ({"model.layers": "cpu", "model.layers.3": "disk"}, "offloading weights to disk is not supported"),
        ({"model.layers": "gpu7"}, "not a device"),
        ("everywhere", "device_map must be a dict"),
    ],
)
def test_bad_device_maps_are_refused_clearly(tiny_llava, device_map, message):
    with pytest.raises(ValueError, match=message):
        _load(tiny_llava, device_map)


def test_a_map_onto_cuda_without_cuda_is_refused(tiny_llava):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        _load(tiny_llava, {"model.layers": "cuda:0"})


def test_accelerate_strategies_spread_whole_layers(tiny_llava_32, monkeypatch):
    """auto / sequential through accelerate on the meta model, as on a machine with two GPUs (pretended here: only
    the device numbers are checked, nothing is placed): contiguous whole layers on both GPUs, none offloaded."""
    from llava.model.config import LlavaConfig
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    monkeypatch.setattr(builder.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builder.torch.cuda, "device_count", lambda: 2)
    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(LlavaConfig.from_pretrained(tiny_llava_32))
    layer_bytes = sum(p.numel() for p in model.model.layers[0].parameters()) * 2
    budget = {0: 20 * layer_bytes, 1: 20 * layer_bytes, "cpu": 10**12}
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    for strategy in ("auto", "balanced", "sequential"):
        placement = placement_from_strategy(model, strategy, dict(budget), torch.float16)
        layers = list(placement.layers)
        assert set(layers) == {cuda0, cuda1}, strategy
        assert layers == sorted(layers, key=lambda d: d.index)  # contiguous: one change of device
        if strategy != "sequential":
            assert abs(layers.count(cuda0) - layers.count(cuda1)) <= 8  # balanced
        assert placement.device_of("model.embed_tokens.weight") == cuda0
        assert placement.device_of("lm_head.weight") == placement.device_of("model.norm.weight") == cuda1
    too_small = {0: 3 * layer_bytes, 1: 3 * layer_bytes, "cpu": 3 * layer_bytes}
    with pytest.raises(ValueError, match="offloading weights to disk is not supported"):
        placement_from_strategy(model, "sequential", too_small, torch.float16)


def test_cli_flag(tiny_llava):
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args(["--model-path", str(tiny_llava), "--device", "cpu"])
    assert args.device_map is None
    assert load_from_args(args)[1].model.layer_devices is None
    layers = '{"model.layers": "cpu:1", "model.layers.3": "cpu:2"}'
    args = parser.parse_args(["--model-path", str(tiny_llava), "--device", "cpu", "--device-map", layers])
    assert load_from_args(args)[1].model.layer_devices == (A, A, A, B)
    budget = ["--device-map", "auto", "--max-memory", '{"cpu": "1GiB"}']  # accelerate's map: all on the CPU
    args = parser.parse_args(["--model-path", str(tiny_llava), "--device", "cpu", *budget])
    assert load_from_args(args)[1].model.layer_devices is None
    assert parse_max_memory('{"0": "30GiB", "cpu": "1GiB"}') == {0: "30GiB", "cpu": "1GiB"}
    assert parse_device_map('{"model.layers": "0", "lm_head": 1}') == {"model.layers": 0, "lm_head": 1}
    assert parse_device_map("sequential") == "sequential"
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_device_map("{model.layers: 0}")


def test_llava_next_mistral_split(tiny_next_mistral):
    """LLaVA-NeXT on a Mistral decoder: anyres views and image_newline go with the first layer (and the tower)."""
    from llava.mm_utils import process_images

    tokenizer, ref, processor, _ = _load(tiny_next_mistral)
    _, split, _, _ = _load(tiny_next_mistral, split_map([A, B, B, A]))
    assert split.device_map["model.image_newline"] == A and split.device_map["lm_head"] == A
    image = random_image(5, (640, 480))
    px = process_images([image], processor, ref.config)
    ids = prompt_ids(tokenizer, "What is the color of the circle?")[None]
    expected, got, moves = _generate_both(ref, split, ids, px, image_sizes=[image.size])
    assert torch.equal(got, expected)
    assert moves.hidden_moves(split.config.hidden_size) == [(A, B), (B, A)] * expected.shape[1]
