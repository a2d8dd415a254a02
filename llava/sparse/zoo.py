"""The methods beyond SparseVLM, FastV, FasterVLM, random and uniform, each in its own module; importing this module
registers them with `llava.sparse.registry` (so `--method NAME` finds them):

- before the LLM: `visionzip` (VisionZip's dominant + contextual tokens), `vispruner` (VisPruner's important +
  diverse tokens), `cdpruner` (CDPruner's conditional DPP), `divprune` (DivPrune's max-min diversity),
  `prumerge` / `prumerge+` (LLaVA-PruMerge's IQR outliers and merges), `hired` (HiRED's per-crop budgets,
  LLaVA-NeXT), `pool` (grid pooling), `downsample` (VTC-Bench's smaller image, Qwen-VL);
- in the LLM: `dart` (DART, once before layer 2), `pdrop` (PyramidDrop's stages);
- video: `dycoke` (DyCoke's token temporal merging), `holitom` (HoliTom's temporal windows and merges).
"""

from llava.sparse import (  # noqa: F401
    cdpruner,
    dart,
    divprune,
    downsample,
    dycoke,
    hired,
    holitom,
    pooling,
    prumerge,
    pyramiddrop,
    visionzip,
    vispruner,
)
