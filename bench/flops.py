"""Useful FLOPs of a training run on a set of examples (ftedit and PyTorch get the same
count; padding and logits at positions the loss does not read are not useful work),
and this machine's measured matrix-product peak.

  forward  = 2·P_blocks·T + 2·D·V·T_target           (blocks over all tokens, head at targets)
  backward = 2·P_above·T + 2·P_trained·T + 2·D·V·T_target
where P_blocks are the parameters of all blocks, P_above those of the blocks from the
lowest trained layer up (input gradients), P_trained the trained ones (weight gradients)."""
import json
import sys
import time

import torch


def block_params(c):
    if c["model_type"] == "gemma3_text":
        d, i, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
        q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    else:
        d, i = c["hidden_size"], c["intermediate_size"]
        hd = c.get("head_dim", d // c["num_attention_heads"])
        q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    attn = d * q + 2 * d * kv + q * d
    mlp = 3 * d * i
    return attn + mlp, mlp


def useful_flops(config, examples, epochs_steps_factor, first_layer, trained_layers):
    c = json.load(open(config))
    per_block, mlp = block_params(c)
    n = c["num_hidden_layers"]
    ex = json.load(open(examples))["examples"]
    T = sum(len(e["prompt"]) + len(e["target"]) for e in ex)
    Tt = sum(len(e["target"]) for e in ex)
    D, V = c["hidden_size"], c["vocab_size"]
    fwd = 2 * per_block * n * T + 2 * D * V * Tt
    bwd = 2 * per_block * (n - first_layer) * T + 2 * mlp * trained_layers * T + 2 * D * V * Tt
    return (fwd + bwd) * epochs_steps_factor


def peak(threads=2, n=2048, reps=5, dtype=torch.float32):
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = time.perf_counter()
    a @ b
    # Fewer repeats where one product is slow (a scalar bf16 GEMM takes minutes).
    reps = max(1, min(reps, int(10 / (time.perf_counter() - t))))
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


if __name__ == "__main__":
    if sys.argv[1] == "peak":
        # The bf16 peak is measured the same way (it is ~100x below f32 on CPUs without
        # AVX512-BF16/AMX, where libtorch's bf16 GEMM is scalar).
        print(json.dumps({"peak_flops": peak(), "peak_flops_bf16": peak(dtype=torch.bfloat16)}))
    else:
        config, examples, factor = sys.argv[1], sys.argv[2], float(sys.argv[3])
        print(json.dumps({"useful_flops": useful_flops(config, examples, factor, 3, 3)}))
