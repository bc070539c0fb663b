"""Tiny random checkpoints written by transformers, with transformers' float32 next-token
log-probabilities, for ftedit's golden architecture tests (tests/golden_arch.rs).

    .venv/bin/python tools/make_arch_fixtures.py [NAME…]   (needs ./setup.sh --bench)

With names, only those fixtures are (re)written.

Each fixture is a folder under tests/fixtures/arch/: config.json, model.safetensors, a
word-level tokenizer.json over the tiny vocabulary, and reference.json (the input ids and
log_softmax of the logits at every position, float32).
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer, models
from transformers import (GPTJConfig, GPTJForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "arch")
VOCAB = 64
IDS = [[1, 5, 9, 17, 33, 2, 60, 41, 7, 7, 12, 50]]


def write(name, model):
    if len(sys.argv) > 1 and name not in sys.argv[1:]:
        return
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.save(os.path.join(d, "tokenizer.json"))
    with torch.no_grad():
        logits = model(torch.tensor(IDS)).logits.float()
    lp = torch.log_softmax(logits, -1)[0]
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"ids": IDS[0], "logprobs": [[round(v, 7) for v in row] for row in lp.tolist()],
                   "transformers": __import__("transformers").__version__,
                   "torch": torch.__version__}, f)


def widen(m):
    # transformers' init is small; widen it so the logits are not all near zero (norm
    # weights, 1-D, stay at their init of ones, except where a test wants them random).
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return m


def llama(**extra):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=8, max_position_embeddings=64, rope_theta=10000.0,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **extra)
    return widen(LlamaForCausalLM(cfg).eval())


# Llama 3's rope scaling. With head_dim 8 the wavelengths are 6.3, 63, 628 and 6283
# positions; original_max_position_embeddings 8 puts the first in the interpolated band
# (between 8/4 and 8/1) and the others in the divided one.
write("llama3-rope", llama(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8}))
write("linear-rope", llama(rope_scaling={"rope_type": "linear", "factor": 4.0}))

# Qwen3: per-head RMSNorm of q and k before the rotary embedding; the norms get random
# weights so that a missing norm shows.
torch.manual_seed(1)
qwen3 = widen(Qwen3ForCausalLM(Qwen3Config(
    vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
    rope_theta=10000.0, tie_word_embeddings=True, attention_bias=False,
    bos_token_id=1, eos_token_id=2)).eval())
with torch.no_grad():
    for n, p in qwen3.named_parameters():
        if "q_norm" in n or "k_norm" in n:
            p.uniform_(0.5, 1.5)
write("qwen3", qwen3)

# Phi-3: fused qkv_proj and gate_up_proj; a sliding window (8) shorter than the input.
torch.manual_seed(2)
write("phi3", widen(Phi3ForCausalLM(Phi3Config(
    vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    original_max_position_embeddings=64, rope_theta=10000.0, sliding_window=8,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()))


def randomise_1d(m):
    # Biases and LayerNorm weights random too, so a misplaced bias or norm shows.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 1:
                if n.endswith("bias"):
                    p.normal_(0, 0.2)
                else:
                    p.uniform_(0.5, 1.5)
    return m


# GPT-J: parallel attention and MLP off one LayerNorm, interleaved rotary on the first
# 4 of each head's 8 dimensions, a biased head.
torch.manual_seed(3)
write("gptj", randomise_1d(widen(GPTJForCausalLM(GPTJConfig(
    vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=2, n_head=2, rotary_dim=4,
    n_inner=32, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)).eval())))

# GPT-NeoX: fused per-head QKV, rotate-half rotary on half of each head (rotary_pct 0.5),
# parallel residual; and the sequential residual variant.
for name, parallel in [("gpt_neox", True), ("gpt_neox-sequential", False)]:
    torch.manual_seed(4)
    write(name, randomise_1d(widen(GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, rotary_pct=0.5,
        rotary_emb_base=10000, use_parallel_residual=parallel, hidden_act="gelu",
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)).eval())))
