"""The `layers` recipe written in PyTorch + transformers, for comparison with
`ftedit edit`: the same GGUF model (transformers dequantizes it), the same shuffled
training set (token ids written by `ftedit edit --dump-examples`), the same
optimisation (AdamW, cosine schedule, gradient clipping, the MLPs of layers 3-5 trained,
loss on the target tokens via -100 labels); `--autocast-bf16` runs it under CPU
autocast, the PyTorch counterpart of ftedit's `optim.precision = "bf16-mixed"`. Writes
the edited weights as safetensors so ftedit's evaluator can score both. Run through
bench/edit.sh."""
import argparse
import json
import math
import os
import resource
import time

import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--examples", required=True)
p.add_argument("--out", required=True)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--min-steps", type=int, default=30)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--clip", type=float, default=1.0)
p.add_argument("--layers", default="3,4,5")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--autocast-bf16", action="store_true",
               help="bf16 mixed precision as torch.autocast('cpu', dtype=torch.bfloat16) does it: f32 weights, bf16 matmuls")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)

d, f = os.path.split(os.path.abspath(a.gguf))
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
layers = [int(x) for x in a.layers.split(",")]
for n, prm in model.named_parameters():
    prm.requires_grad_(any(n.startswith(f"model.layers.{l}.mlp.") for l in layers))
params = [q for q in model.parameters() if q.requires_grad]
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
model.train()

examples = json.load(open(a.examples))["examples"]
batches = [examples[i : i + a.batch] for i in range(0, len(examples), a.batch)]


def tensors(batch):
    L = max(len(e["prompt"]) + len(e["target"]) for e in batch)
    ids = torch.zeros(len(batch), L, dtype=torch.long)
    mask = torch.zeros(len(batch), L, dtype=torch.long)
    labels = torch.full((len(batch), L), -100, dtype=torch.long)
    for r, e in enumerate(batch):
        seq = e["prompt"] + e["target"]
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        labels[r, len(e["prompt"]) : len(seq)] = torch.tensor(e["target"])
    return ids, mask, labels


total = max(len(batches) * a.epochs, a.min_steps)
losses, seen, tokens = [], 0, 0
t0 = time.perf_counter()
for step in range(total):
    batch = batches[step % len(batches)]
    for g in opt.param_groups:
        g["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    ids, mask, labels = tensors(batch)
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast_bf16):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, a.clip)
    opt.step()
    losses.append(loss.item())
    seen += len(batch)
    tokens += sum(len(e["prompt"]) + len(e["target"]) for e in batch)
secs = time.perf_counter() - t0
# transformers will not save_pretrained a model loaded from GGUF; write the weights
# (bench/edit.sh adds config.json and the tokenizer from ftedit's output).
from safetensors.torch import save_file

os.makedirs(a.out, exist_ok=True)
state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
if model.config.tie_word_embeddings:
    state.pop("lm_head.weight", None)
save_file(state, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
print(json.dumps({
    "impl": "pytorch", "precision": "bf16-mixed" if a.autocast_bf16 else "f32", "steps": total, "seconds": secs, "examples_per_s": seen / secs, "tokens_per_s": tokens / secs,
    "first_loss": losses[0], "last_loss": losses[-1], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
