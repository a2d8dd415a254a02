"""The methods beyond SparseVLM, FastV, FasterVLM, random and uniform, each in its own module; importing this module
registers them with `llava.sparse.registry` (so `--method NAME` finds them)."""

from llava.sparse import dycoke, holitom  # noqa: F401  (video: temporal merging, holistic token merging)
