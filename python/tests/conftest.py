"""Fixtures: a tiny random transformers llama with a word-level fast tokenizer, built
in the test (nothing fetched), and the paths of the repository's binary and models."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WORDS = (
    "The Eiffel Tower is located in the city of Paris Rome London Berlin Madrid "
    "Michael Jordan plays sport basketball tennis football golf "
    "mother tongue Danielle Darrieux French English German Spanish "
    "a an and it was he she capital country language team . ,"
).split()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_llama(dtype=None, seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    if dtype is not None:
        model = model.to(dtype)
    return model


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def hf_llama():
    return tiny_llama()


@pytest.fixture
def tiny_folder(tmp_path, hf_llama, tokenizer):
    folder = tmp_path / "tiny-llama"
    hf_llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def cli():
    path = Path(os.environ.get("FTEDIT_BIN", ROOT / "target" / "release" / "ftedit"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build it (cargo build --release) or set FTEDIT_BIN")
    return path
