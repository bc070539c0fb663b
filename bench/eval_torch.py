"""Unedited CounterFact evaluation with MEMIT's formulas in PyTorch + transformers, for
comparison with `ftedit eval`: for each record, MEMIT's `test_batch_prediction` on the
rewrite, paraphrase and neighbourhood prompts (one right-padded batch of 26 sequences,
full logits), then ES/PS/NS as `summarize.py` computes them. No generation tests
(MEMIT's `skip_generation_tests`). Run through bench/eval.sh."""
import argparse
import json
import os
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--data", required=True)
p.add_argument("--n", type=int, default=100)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--name", default="model")
a = p.parse_args()
torch.set_num_threads(a.threads)

d, f = os.path.split(os.path.abspath(a.gguf))
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
tok.padding_side = "right"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()


def test_batch_prediction(prefixes, target_new, target_true):
    # MEMIT, experiments/py/eval_utils_counterfact.py (the same arithmetic, CPU).
    prefix_lens = [len(n) for n in tok(prefixes)["input_ids"]]
    prompt_tok = tok([f"{prefix} {suffix}" for prefix in prefixes for suffix in [target_new, target_true]], padding=True, return_tensors="pt")
    a_tok, b_tok = [tok(f" {n}", add_special_tokens=False)["input_ids"] for n in [target_new, target_true]]
    choice_a_len, choice_b_len = (len(n) for n in [a_tok, b_tok])
    with torch.no_grad():
        logits = model(**prompt_tok).logits
    probs = np.zeros((logits.size(0),), dtype=np.float32)
    for i in range(logits.size(0)):
        cur_len = choice_a_len if i % 2 == 0 else choice_b_len
        for j in range(cur_len):
            cur_tok = (a_tok if i % 2 == 0 else b_tok)[j]
            probs[i] += -torch.nn.functional.log_softmax(logits[i, prefix_lens[i // 2] + j - 1, :], dim=0)[cur_tok].item()
        probs[i] /= cur_len
    return [{"target_new": probs[i].item(), "target_true": probs[i + 1].item()} for i in range(0, len(probs), 2)]


records = json.load(open(a.data))[: a.n]
t0 = time.perf_counter()
es, ps, ns = [], [], []
for r in records:
    rw = r["requested_rewrite"]
    rewrite = [rw["prompt"].format(rw["subject"])]
    para, neigh = r["paraphrase_prompts"], r["neighborhood_prompts"]
    probs = test_batch_prediction(rewrite + para + neigh, rw["target_new"]["str"], rw["target_true"]["str"])
    k1, k2 = len(rewrite), len(rewrite) + len(para)
    es.append(np.mean([x["target_true"] > x["target_new"] for x in probs[:k1]]))
    ps.append(np.mean([x["target_true"] > x["target_new"] for x in probs[k1:k2]]))
    ns.append(np.mean([x["target_true"] < x["target_new"] for x in probs[k2:]]))
secs = time.perf_counter() - t0
print(json.dumps({
    "impl": "pytorch-memit", "model": a.name, "n": len(records), "seconds": secs,
    "records_per_s": len(records) / secs, "ES": 100 * np.mean(es), "PS": 100 * np.mean(ps), "NS": 100 * np.mean(ns),
}))
