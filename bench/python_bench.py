"""The Python module's speed, side by side in one run (bench/python.sh runs it):

1. The README's three-fact edit: `ftedit edit` (one process: start, load, edit, write
   the GGUF) against the same work from Python (`ftedit.load`, `Model.edit`,
   `Model.save`, in a process that has already imported ftedit and torch): wall
   seconds and the edit's own seconds, medians of alternating runs.
2. A CounterFact mass edit (the first N records, the `layers` recipe, no health check):
   `ftedit.edit_transformers` on SmolLM2 loaded by transformers from its GGUF (f32),
   against the same recipe in plain PyTorch (bench/edit_torch.py) on the training set
   `ftedit edit --dump-examples` wrote for the same records: examples/s.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import ftedit

p = argparse.ArgumentParser()
p.add_argument("--edits", type=int, default=100)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--out", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--only", choices=["three", "mass"], help="run one of the two parts")
a = p.parse_args()
torch.set_num_threads(a.threads)
os.makedirs(a.out, exist_ok=True)
BIN = "./target/release/ftedit"
GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = "../shared/data/counterfact/counterfact_rome_dev.json"
FACTS = [json.loads(line) for line in open("examples/edits.jsonl")]


def row(**kw):
    print(json.dumps(kw), flush=True)


cpu = open("/proc/cpuinfo").read()
model_name = next(l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name"))
flags = next(l.split(":", 1)[1].split() for l in cpu.splitlines() if l.startswith("flags"))
row(cpu=model_name, threads=a.threads,
    flags=[x for x in flags if x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")])

# 1. Three facts, CLI and Python alternating.
cli, py, cli_edit, py_edit = [], [], [], []
for r in range(a.repeats if a.only != "mass" else 0):
    out = f"{a.out}/three-cli.gguf"
    t = time.perf_counter()
    subprocess.run(
        [BIN, "edit", "--model", "smollm2", "--edits", "examples/edits.jsonl", "--pool",
         "examples/facts.jsonl", "--out", out, "--force", "--quiet", "--threads", str(a.threads)],
        check=True, capture_output=True,
    )
    cli.append(time.perf_counter() - t)
    cli_edit.append(json.load(open(out + ".report.json"))["timing"]["edit"])
    t = time.perf_counter()
    model = ftedit.load("smollm2", threads=a.threads)
    report = model.edit(FACTS, pool="examples/facts.jsonl", progress=False)
    model.save(f"{a.out}/three-py.gguf", force=True)
    py.append(time.perf_counter() - t)
    py_edit.append(report["timing"]["edit"])
    assert report["check"]["not_taken"] == 0
    del model
for impl, wall, edit in [("cli", cli, cli_edit), ("python", py, py_edit)] if cli else []:
    row(bench="three-facts", impl=impl, runs=len(wall), wall_s=statistics.median(wall),
        edit_s=statistics.median(edit), all_wall_s=wall)

if a.only == "three":
    sys.exit(0)

# 2. N CounterFact edits: the CLI (which also writes the training set), the Python
#    module on a transformers model, plain PyTorch on that training set.
examples = f"{a.out}/examples-{a.edits}.json"
subprocess.run(
    [BIN, "edit", "--model", "smollm2", "--edits", DATA, "--n", str(a.edits), "--recipe",
     "layers", "--threads", str(a.threads), "--quiet", "--no-health", "--out",
     f"{a.out}/mass-cli", "--force", "--dump-examples", examples],
    check=True, capture_output=True,
)
run = json.load(open(f"{a.out}/mass-cli/ftedit_report.json"))["training"]["runs"][0]
row(bench=f"mass-{a.edits}", impl="cli", seconds=run["seconds"], steps=run["steps"],
    examples_per_s=run["examples_per_s"])

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

d, f = os.path.split(os.path.abspath(GGUF))
hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
report = ftedit.edit_transformers(hf, tok, DATA, n=a.edits, recipe="layers", progress=False)
run = report["training"]["runs"][0]
row(bench=f"mass-{a.edits}", impl="python edit_transformers", seconds=run["seconds"],
    steps=run["steps"], examples_per_s=run["examples_per_s"],
    not_taken=report["check"]["not_taken"], copied_back=len(report["copied_back"]))
del hf

torch_run = subprocess.run(
    [sys.executable, "bench/edit_torch.py", "--gguf", GGUF, "--examples", examples, "--out",
     f"{a.out}/mass-torch", "--threads", str(a.threads)],
    check=True, capture_output=True, text=True,
)
t = json.loads(torch_run.stdout.strip().splitlines()[-1])
row(bench=f"mass-{a.edits}", impl="pytorch", seconds=t["seconds"], steps=t["steps"],
    examples_per_s=t["examples_per_s"])
