"""Make a tiny random BERT cross-encoder (reranker), offline, for rerank and score tests.

No package ships a small reranker, so the local cluster's one is generated, like the tiny
chat model. Run with the vLLM environment's interpreter (torch, tokenizers, transformers):
    .venvs/vllm/bin/python scripts/make_tiny_reranker.py .state/models/tiny-reranker

It is a ``BertForSequenceClassification`` with one label: what sentence-transformers'
``CrossEncoder`` (which Infinity runs) and vLLM's pooling runner (``/v1/score``,
``/v1/rerank``) load as a cross-encoder. Its WordPiece vocabulary is the words and
characters of a few sentences (about 200 tokens); it pairs texts as
``[CLS] a [SEP] b [SEP]`` with token type ids. The weights are random and seeded and the
build is reproducible (about 1.5 MB): tests may assert shapes, ordering and determinism,
never which document wins. head_dim is 32 because vLLM's CPU attention needs at least 32.
"""

from __future__ import annotations

import sys
from pathlib import Path

from make_tiny_model import run, save_atomically

SENTENCES = [
    "Hello, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Compute nodes serve large language models behind an OpenAI compatible API.",
    "A tiny reranker scores pairs with random weights, and that is fine for tests.",
    "Which document answers the query best? The one with the highest relevance score.",
    "What is the capital of France? Paris is the capital of France.",
    "Schedulers queue jobs; workers run functions; servers answer requests.",
    "0123456789 !?.,;:'\"()[]{}<>/-_+=*&^%$#@~`|\\",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocabulary() -> dict[str, int]:
    """Special tokens, then every character (alone and as ``##`` suffix), then every word.

    Built, not trained: the tokenizers library's WordPiece trainer numbers tokens of equal
    frequency in a different order on each run, and the same weights would then score
    differently from one build to the next.
    """
    from tokenizers.pre_tokenizers import BertPreTokenizer

    split = BertPreTokenizer()
    words = {w for s in SENTENCES for w, _ in split.pre_tokenize_str(s.lower())}
    chars = sorted({c for w in words for c in w})
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *sorted(words - set(chars))]
    return {token: i for i, token in enumerate(tokens)}


def make(out: Path) -> None:
    """Write tokenizer, config and seeded random weights to `out` (replaced atomically)."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(vocab=vocabulary(), lowercase=True)
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,  # its post-processor pairs texts BERT's way
        do_lower_case=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
    )

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.2,  # spreads the random scores apart (0.02 makes near-ties)
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,  # one relevance score a pair: a cross-encoder
        id2label={0: "LABEL_0"},
        label2id={"LABEL_0": 0},
        architectures=["BertForSequenceClassification"],
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)

    save_atomically(out, model, tokenizer)


if __name__ == "__main__":
    sys.exit(run(sys.argv, make, "tiny reranker"))
