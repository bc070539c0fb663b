"""The foundation benchmark in PyTorch + transformers, for comparison with
benches/foundation.rs: load the same GGUF file (transformers dequantizes it), time a
16-token forward pass and the same training step (AdamW on the MLPs of layers 3-5, the
batch that the Rust benchmark wrote, loss on the target tokens via -100 labels).
Run through bench/foundation.sh (needs ./setup.sh --bench)."""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--batch", required=True)
p.add_argument("--prompt16", required=True, help="comma-separated 16 token ids")
p.add_argument("--runs", type=int, default=10)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--name", default="model")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


def load():
    d, f = os.path.split(os.path.abspath(a.gguf))
    return AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)


t = time.perf_counter()
model = load()
load_s = time.perf_counter() - t

ids16 = torch.tensor([[int(x) for x in a.prompt16.split(",")]])
fwd = []
with torch.no_grad():
    for i in range(a.runs + 3):
        t = time.perf_counter()
        model(ids16, logits_to_keep=1)
        if i >= 3:
            fwd.append(time.perf_counter() - t)

batch = json.load(open(a.batch))
examples = batch["examples"]
L = max(len(e["prompt"]) + len(e["target"]) for e in examples)
ids = torch.zeros(len(examples), L, dtype=torch.long)
mask = torch.zeros(len(examples), L, dtype=torch.long)
labels = torch.full((len(examples), L), -100, dtype=torch.long)
for r, e in enumerate(examples):
    seq = e["prompt"] + e["target"]
    ids[r, : len(seq)] = torch.tensor(seq)
    mask[r, : len(seq)] = 1
    labels[r, len(e["prompt"]) : len(seq)] = torch.tensor(e["target"])

for n, prm in model.named_parameters():
    prm.requires_grad_(any(n.startswith(f"model.layers.{l}.mlp.") for l in (3, 4, 5)))
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=batch["lr"], weight_decay=0.0)
model.train()
steps, first_loss = [], None
for i in range(a.runs + 2):
    t = time.perf_counter()
    opt.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    opt.step()
    if first_loss is None:
        first_loss = loss.item()
    if i >= 2:
        steps.append(time.perf_counter() - t)

print(json.dumps({
    "impl": "pytorch", "model": a.name, "torch": torch.__version__,
    "threads": torch.get_num_threads(), "load_s": load_s,
    "forward16_ms": statistics.median(fwd) * 1e3, "train_step_ms": statistics.median(steps) * 1e3,
    "batch": len(examples), "first_loss": first_loss, "runs": a.runs,
}))
