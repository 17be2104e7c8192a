"""Tiny random models built in code, so unit tests exercise the real code paths in milliseconds.

The chat model is a 2-layer LlamaForCausalLM with a byte-level BPE tokenizer (like Qwen and
SmolLM2, so incomplete UTF-8 pieces really occur), ChatML special tokens and chat template. The
encoder is a 2-layer BertModel with a WordPiece tokenizer. Everything is seeded: same weights and
vocabulary on every call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TEXT = (
    "the a an of to in and or not is are was be have has do does can will would should could "
    "def return import from class self if else elif for while with as try except finally "
    "print list dict set tuple int str float bool None True False lambda yield async await "
    "hello world python code function value number string error test model token text chat "
    "user assistant system message reply answer question context window cache file path data "
    "café naïve über déjà señor 東京 数据 模型 🙂 ✓ → ± µ"
)
_WORDS = _TEXT.split()


def _corpus() -> list[str]:
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(400):
        idx = torch.randint(len(_WORDS), (8,), generator=g).tolist()
        lines.append(" ".join(_WORDS[i] for i in idx) + ".")
    return lines


def build_tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (~500 tokens) with ChatML specials; ids 0, 1, 2 are the special tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_chat_model(path: Path) -> Path:
    """Save a tiny random Llama chat model + tokenizer at ``path`` (created) and return it."""
    path = Path(path)
    tok = build_tiny_chat_tokenizer()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_tiny_encoder(path: Path) -> Path:
    """Save a tiny random BERT encoder + WordPiece tokenizer at ``path`` and return it."""
    path = Path(path)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path
