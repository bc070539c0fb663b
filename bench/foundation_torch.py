"""The foundation benchmark in PyTorch + transformers, for comparison with
bench/foundation.rs: load the same GGUF file (transformers dequantizes it), time a
16-token forward pass and the same training step (AdamW on the MLPs of layers 3-5, the
batch that the Rust benchmark wrote, loss on the target tokens via -100 labels).
With --config, random weights of that shape instead (GPU runs, where model files cannot
travel). Run through bench/foundation.sh or bench/device.sh (needs ./setup.sh --bench)."""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--gguf")
p.add_argument("--config", help="a config.json: random weights of that shape")
p.add_argument("--device", default="cpu")
p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
p.add_argument("--batch", required=True)
p.add_argument("--prompt16", required=True, help="comma-separated 16 token ids")
p.add_argument("--runs", type=int, default=10)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--name", default="model")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
dev = torch.device(a.device)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


t = time.perf_counter()
if a.config:
    from transformers import AutoConfig

    cfg = json.load(open(a.config))
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    load_s = None
else:
    d, f = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype)
    load_s = time.perf_counter() - t
model = model.to(dev)

ids16 = torch.tensor([[int(x) for x in a.prompt16.split(",")]], device=dev)
fwd = []
with torch.no_grad():
    for i in range(a.runs + 3):
        t = time.perf_counter()
        model(ids16, logits_to_keep=1)
        sync()
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
ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)

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
    sync()
    if first_loss is None:
        first_loss = loss.item()
    if i >= 2:
        steps.append(time.perf_counter() - t)

print(json.dumps({
    "impl": "pytorch", "model": a.name, "torch": torch.__version__, "device": str(dev), "dtype": a.dtype,
    "threads": torch.get_num_threads(), "load_s": load_s,
    "forward16_ms": statistics.median(fwd) * 1e3, "train_step_ms": statistics.median(steps) * 1e3,
    "batch": len(examples), "first_loss": first_loss, "runs": a.runs,
}))
