"""Make a tiny random Llama chat model, offline, for vLLM tests (about 2 MB).

Run with the vLLM environment's interpreter (it has torch, tokenizers and transformers):
    .venvs/vllm/bin/python scripts/make_tiny_model.py .state/models/tiny-llama

The weights are random and seeded: tests may assert shapes, token usage and determinism at
temperature 0, never text. head_dim is 32 because vLLM's CPU attention needs at least 32.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

SENTENCES = [
    "Hello, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Compute nodes serve large language models behind an OpenAI compatible API.",
    "A tiny model answers with random tokens, and that is fine for tests.",
    "Schedulers queue jobs; workers run functions; servers answer requests.",
    "What is the capital of France? Paris is the capital of France.",
    "user assistant system tool message content role",
    "0123456789 !?.,;:'\"()[]{}<>/-_+=*&^%$#@~`|\\",
]
# <tool_call> and </tool_call> are the markers vLLM's hermes tool parser looks up in the
# vocabulary (endpoints/local/tiny-chat.yaml names that parser).
SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", "<tool_call>", "</tool_call>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    # An assistant's tool calls (content null) and a tool's result render as text, so that a
    # tool-call round trip goes through the template.
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "<tool_call>{{ call['function']['name'] }} {{ call['function']['arguments'] }}</tool_call>"
    "{% endfor %}{% endif %}</s>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make(out: Path) -> None:
    """Write tokenizer, config and seeded random weights to `out` (replaced atomically)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        SENTENCES * 4, vocab_size=512, min_frequency=1, special_tokens=SPECIAL_TOKENS
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    config = llama_config(tokenizer, 512, torch_dtype="float32")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    save_atomically(out, model, tokenizer)


def llama_config(tokenizer: Any, positions: int, **extra: Any) -> Any:
    """The tiny Llama's shape (the chat model's, and the vision model's language half)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def save_atomically(out: Path, *parts: Any) -> None:
    """Each part's ``save_pretrained`` (weights as safetensors) into a folder beside ``out``,
    which then replaces ``out``: a stopped run leaves the old model or none, never half."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp) / "model"
        for part in parts:
            part.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)


def run(argv: list[str], make: Callable[[Path], None], what: str) -> int:
    """The command line of every tiny model script: one argument, the output folder."""
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTPUT_DIR", file=sys.stderr)
        return 2
    make(Path(argv[1]))
    print(f"{what} written to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv, make, "tiny model"))
