#!/usr/bin/env python3
"""ftedit's downstream-task scores against lm-evaluation-harness itself, task by task.

Runs lm-eval (its Python API, `lm_eval.simple_evaluate`, model "hf", float32 on the CPU)
on the local task files of `../shared/data/general` and sets its numbers beside those of
`ftedit health --json` on the same items. A benchmark, not a test: it needs lm-eval
(`./setup.sh --bench`, or any Python that can `import lm_eval`) and is never run in
CI. bench/lm_eval_parity.sh runs both sides and calls this script.

The tasks are lm-eval's own YAML files (prompts, choices, metrics), `include:`d by task
files written at run time into a temporary `include_path`; these override only the task
name, the dataset (`json`/`csv`/`text` on the local file, its split names) and, where the
local layout differs from the HF dataset lm-eval reads, `process_docs`, which rebuilds
the HF layout (lm-eval's own `process_docs` runs after it where the task has one).

Items: `--limit N` is lm-eval's limit (the first N docs) for every task. For MMLU
ftedit takes the first ceil(N / 12) items of each of the 12 subjects (lm-eval's limit on
each subject task; src/eval/general/tasks.rs), so each lm-eval subject task gets the
limit ceil(N / 12) here, and the subject tasks' mean weighted by size (lm-eval's `mmlu`
group rule) is compared with ftedit's `mmlu`.

  python bench/lm_eval_parity.py --model-dir DIR --data ../shared/data/general \
      --ftedit-json health.json --limit 10 --out parity.json
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ALL_TASKS = [
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "piqa",
    "winogrande",
    "boolq",
    "mmlu",
    "lambada_openai",
]
# ftedit's names for lm-eval's.
FTEDIT_NAME = {"lambada_openai": "lambada"}
PREFIX = "parity_"

NOTES = {
    "hellaswag": (
        "Not exact parity: lm-eval reads HF Rowan/hellaswag (validation); the local file is "
        "klosax/llama.cpp text (hellaswag/hellaswag_val_full.first2000.txt, 6 lines per item, "
        "ctx_b not capitalised). Both sides rebuild the original ctx by LM_EVAL.md's fix (the "
        "text after the last '. ' is split off as ctx_b when it starts lower-case, except items "
        "1692 and 1828); here it is handed to lm-eval's own hellaswag process_docs as "
        "activity_label / ctx_a / ctx_b / endings / label, so lm-eval's preprocess and "
        "capitalize() build the query. Exact for the items whose original lines are known, "
        "unconfirmed for the rest; only the first 2,000 items exist."
    ),
    "mmlu": (
        "12-subject subset (2,013 items), not full MMLU. Both sides take the first "
        "ceil(N / 12) items of every subject (lm-eval's limit on each subject task), and "
        "the size-weighted mean over the subject tasks is compared."
    ),
    "winogrande": (
        "The local file is MosaicML's derived {context_options, continuation, gold}; "
        "process_docs turns it into lm-eval's {sentence, option1, option2, answer} as "
        "sentence = '_ ' + continuation, option_k = context_options[k], so lm-eval's "
        "doc_to_choice (sentence[:idx] + option) and doc_to_target (sentence[idx+1:].strip()) "
        "give exactly the original contexts and continuation."
    ),
    "lambada_openai": "The local file is byte-identical to lm-eval's pinned lambada_openai test file.",
}

UTILS = r'''
"""Written by bench/lm_eval_parity.py: the local files in the HF datasets' layouts."""
import datasets

PIQA_LABELS = {piqa_labels!r}
MMLU_LIMITS = {mmlu_limits!r}


def arc(ds):
    """AI2 layout {{id, question: {{stem, choices: [{{text, label}}]}}, answerKey}} -> HF allenai/ai2_arc."""
    def f(d):
        q = d["question"]
        return {{
            "id": d["id"],
            "question": q["stem"],
            "choices": {{"text": [c["text"] for c in q["choices"]],
                        "label": [c["label"] for c in q["choices"]]}},
            "answerKey": d["answerKey"],
        }}
    return ds.map(f, remove_columns=ds.column_names)


def piqa(ds):
    """{{goal, sol1, sol2}} + valid-labels.lst -> HF baber/piqa {{goal, sol1, sol2, label}}."""
    with open(PIQA_LABELS, encoding="utf-8") as fh:
        labels = [int(l.strip()) for l in fh.read().split("\n") if l.strip()]
    assert len(labels) >= len(ds), (len(labels), len(ds))
    return ds.map(lambda d, i: {{"label": labels[i]}}, with_indices=True)


def winogrande(ds):
    """MosaicML's {{context_options, continuation, gold}} -> HF winogrande {{sentence, option1,
    option2, answer}}: with the blank first, lm-eval's doc_to_choice gives the contexts."""
    def f(d):
        a, b = d["context_options"]
        return {{"sentence": "_ " + d["continuation"], "option1": a, "option2": b,
                "answer": str(int(d["gold"]) + 1)}}
    return ds.map(f, remove_columns=ds.column_names)


def boolq(ds):
    """label "true"/"false" -> super_glue's 1/0."""
    def f(d):
        v = d["label"]
        if isinstance(v, str):
            v = {{"true": 1, "false": 0}}[v]
        return {{"label": int(v)}}
    # map keeps a column's old type where the new values cast to it: say int64.
    return ds.map(f).cast_column("label", datasets.Value("int64"))


def _capitalize_fix(line, i):
    """LM_EVAL.md's fix as (head, ctx_b): ctx_b = the text after the last '. ' when it
    starts lower-case (items 1692 and 1828 left alone), else empty."""
    at = line.rfind(". ")
    if i in (1692, 1828) or at < 0 or not line[at + 2:at + 3].islower():
        return line, ""
    return line[:at + 1], line[at + 2:]


def hellaswag(ds):
    """klosax text (one document; 6 lines per item: 'label: ctx', gold, 4 endings) -> HF
    Rowan/hellaswag {{activity_label, ctx_a, ctx_b, endings, label}}, then lm-eval's own
    process_docs (query = preprocess(activity_label + ': ' + ctx_a + ' ' +
    ctx_b.capitalize()), choices = preprocess(ending))."""
    from lm_eval.tasks.hellaswag.utils import process_docs

    text = "".join(ds["text"])
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [l[:-1] if l.endswith("\r") else l for l in lines]  # as Rust's str::lines
    assert len(lines) % 6 == 0, len(lines)
    rows = []
    for i in range(len(lines) // 6):
        item = lines[6 * i:6 * i + 6]
        head, ctx_b = _capitalize_fix(item[0], i)
        colon = head.find(": ")  # lm-eval joins activity_label + ": " + ctx_a
        if colon < 0:
            raise ValueError(f"hellaswag item {{i}}: no 'activity_label: ' in {{item[0]!r}}")
        rows.append({{"ind": i, "activity_label": head[:colon], "ctx_a": head[colon + 2:],
                     "ctx_b": ctx_b, "endings": item[2:6], "label": item[1].strip()}})
    return process_docs(datasets.Dataset.from_list(rows))


def _mmlu(ds, subject):
    k = MMLU_LIMITS.get(subject, len(ds))
    ds = ds.select(range(min(k, len(ds))))
    def f(d):
        return {{"question": d["question"],
                "subject": subject,
                "choices": [d["choice0"], d["choice1"], d["choice2"], d["choice3"]],
                "answer": int(d["answer"])}}
    return ds.map(f, remove_columns=ds.column_names).cast_column("answer", datasets.Value("int64"))


def raw(s):
    """pandas converter: every CSV field kept as the string it is (no NA, no numbers)."""
    return s
'''


def yaml_str(s):
    return json.dumps(str(s))  # a JSON string is a valid YAML scalar


def mmlu_subjects(data):
    return sorted(p.name[: -len("_test.csv")] for p in (data / "mmlu" / "test").glob("*_test.csv"))


def mmlu_limits(data, limit):
    """Per subject, how many of its first items ftedit's sample of `limit` holds:
    ceil(limit / subjects) of each (all of them without a limit)."""
    import csv

    subjects = mmlu_subjects(data)
    out = {}
    for s in subjects:
        with open(data / "mmlu" / "test" / f"{s}_test.csv", newline="", encoding="utf-8") as fh:
            n = sum(1 for _ in csv.reader(fh)) - 1
        out[s] = n if limit is None else min(n, -(-limit // len(subjects)))
    return out


def write_tasks(tmp, data, lm_tasks_dir, tasks, limit):
    """The task YAMLs and their utils module in `tmp`; returns the lm-eval task names
    and, for MMLU, the subject limits."""
    d = lambda rel: yaml_str(data / rel)
    inc = lambda rel: yaml_str(lm_tasks_dir / rel)
    limits = mmlu_limits(data, limit) if "mmlu" in tasks else {}
    (tmp / "parity_utils.py").write_text(
        UTILS.format(piqa_labels=str(data / "piqa" / "valid-labels.lst"), mmlu_limits=limits)
    )
    no_fewshot = "training_split: null\nvalidation_split: null\nfewshot_split: null\n"
    specs = {
        "arc_easy": f"include: {inc('arc/arc_easy.yaml')}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d('arc_easy/ARC-Easy-Test.jsonl')}\n"
        f"{no_fewshot}test_split: test\nprocess_docs: !function parity_utils.arc\n",
        "arc_challenge": f"include: {inc('arc/arc_challenge.yaml')}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d('arc_challenge/ARC-Challenge-Test.jsonl')}\n"
        f"{no_fewshot}test_split: test\nprocess_docs: !function parity_utils.arc\n",
        "hellaswag": f"include: {inc('hellaswag/hellaswag.yaml')}\ndataset_path: text\ndataset_name: null\n"
        f"dataset_kwargs:\n  sample_by: document\n  data_files:\n"
        f"    validation: {d('hellaswag/hellaswag_val_full.first2000.txt')}\n"
        "training_split: null\nfewshot_split: null\nvalidation_split: validation\ntest_split: null\n"
        "process_docs: !function parity_utils.hellaswag\n",
        "piqa": f"include: {inc('piqa/piqa.yaml')}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {d('piqa/valid.jsonl')}\n"
        "training_split: null\nfewshot_split: null\nvalidation_split: validation\ntest_split: null\n"
        "process_docs: !function parity_utils.piqa\n",
        "winogrande": f"include: {inc('winogrande/default.yaml')}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {d('winogrande/winogrande.jsonl')}\n"
        "training_split: null\nfewshot_split: null\nvalidation_split: validation\ntest_split: null\n"
        "process_docs: !function parity_utils.winogrande\n",
        "boolq": f"include: {inc('super_glue/boolq/default.yaml')}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {d('boolq/val.jsonl')}\n"
        "training_split: null\nfewshot_split: null\nvalidation_split: validation\ntest_split: null\n"
        "process_docs: !function parity_utils.boolq\n",
        "lambada_openai": f"include: {inc('lambada/lambada_openai.yaml')}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d('lambada_openai/lambada_test.jsonl')}\n"
        f"{no_fewshot}test_split: test\n",
    }
    names = []
    for t in tasks:
        if t == "mmlu":
            continue
        (tmp / f"{PREFIX}{t}.yaml").write_text(f"task: {PREFIX}{t}\ntag: []\n" + specs[t])
        names.append(PREFIX + t)
    if "mmlu" in tasks:
        conv = "\n".join(
            f"    {c}: !function parity_utils.raw"
            for c in ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
        )
        utils_fns = []
        for s in limits:
            utils_fns.append(f"\n\ndef mmlu_{s}(ds):\n    return _mmlu(ds, {s!r})\n")
            (tmp / f"{PREFIX}mmlu_{s}.yaml").write_text(
                f"include: {inc(f'mmlu/default/mmlu_{s}.yaml')}\ntask: {PREFIX}mmlu_{s}\ntag: []\n"
                f"dataset_path: csv\ndataset_name: null\ndataset_kwargs:\n"
                f"  keep_default_na: false\n  na_filter: false\n  converters:\n{conv}\n"
                f"  data_files:\n    test: {d(f'mmlu/test/{s}_test.csv')}\n"
                f"    dev: {d(f'mmlu/dev/{s}_dev.csv')}\n"
                "test_split: test\nfewshot_split: dev\n"
                f"process_docs: !function parity_utils.mmlu_{s}\n"
            )
            names.append(f"{PREFIX}mmlu_{s}")
        with open(tmp / "parity_utils.py", "a") as fh:
            fh.writelines(utils_fns)
    # One group holding every task: lm-eval 0.4.9.2 logs a lone task's YAML path relative
    # to its own tasks folder and fails for an include_path elsewhere; a group's members
    # are not logged that way. The group has no metrics of its own.
    (tmp / "lm_eval_parity_group.yaml").write_text(
        "group: lm_eval_parity\ntask:\n" + "".join(f"  - {n}\n" for n in names)
    )
    return names, limits


def per_doc(samples, output_type):
    """lm-eval's per-doc log-likelihoods and verdicts, small enough to keep."""
    out = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        resps = [r[0] for r in s["resps"]]  # (ll, is_greedy) per request
        row = {"doc_id": s["doc_id"], "ll": [float(r[0]) for r in resps]}
        if output_type == "loglikelihood":
            row["is_greedy"] = bool(resps[0][1])
            row["acc"] = s.get("acc")
        else:
            gold = s["target"]
            if "option1" in s["doc"]:  # WinoGrande: the target is the continuation
                gold = {"1": 0, "2": 1}[s["doc"]["answer"]]
            row["gold"] = gold
            row["acc"] = s.get("acc")
            if "acc_norm" in s:
                row["acc_norm"] = s["acc_norm"]
            # How near a tie the winner was: a flip below ~1e-4 nats is float noise.
            lls = sorted(row["ll"], reverse=True)
            row["margin"] = lls[0] - lls[1] if len(lls) > 1 else None
        out.append(row)
    return out


def example(samples):
    """The first doc's requests, (context, continuation) as lm-eval built them."""
    s = min(samples, key=lambda s: s["doc_id"])
    return [list(a) for a in s["arguments"]] if "arguments" in s else None


def ftedit_per_doc(pattern, limit, tasks):
    """Per task, per doc (0-based, in ftedit's order): (acc, acc_norm, ll) as 0/1 verdicts
    and, for LAMBADA, the doc's log-likelihood, from `ftedit health --general k` for
    k = 1..limit: doc k-1's verdict is count(k) - count(k-1) (count = score * n / 100)
    and LAMBADA's ll is -(k ln ppl_k - (k-1) ln ppl_(k-1))."""
    import math

    runs = []
    for k in range(1, limit + 1):
        with open(pattern.replace("{k}", str(k))) as fh:
            runs.append(json.load(fh)["general"]["tasks"])
    out = {}
    for t in tasks:
        if t == "mmlu":
            continue  # its sample grows by a row of 12 subjects, not one item at a time
        name = FTEDIT_NAME.get(t, t)
        prev = {"n": 0, "acc": 0.0, "acc_norm": 0.0, "s": 0.0}
        rows = []
        for r in runs:
            x = r[name]
            if x["n"] == prev["n"]:
                break  # the file ended
            cur = {"n": x["n"], "acc": x["acc"] * x["n"] / 100, "acc_norm": (x.get("acc_norm") or 0) * x["n"] / 100}
            cur["s"] = -x["n"] * math.log(x["perplexity"]) if x.get("perplexity") else 0.0
            row = {"acc": round(cur["acc"] - prev["acc"])}
            if x.get("acc_norm") is not None:
                row["acc_norm"] = round(cur["acc_norm"] - prev["acc_norm"])
            if x.get("perplexity") is not None:
                row["ll"] = cur["s"] - prev["s"]
            rows.append(row)
            prev = cur
        out[t] = rows
    return out


def lm_docs_in_order(t, docs, limits):
    """lm-eval's per-doc rows in ftedit's order (MMLU: subjects in name order)."""
    if t != "mmlu":
        return docs[t]
    return [d for s in limits for d in docs[f"mmlu_{s}"]]


def compare_docs(t, ft_rows, lm_rows):
    n = min(len(ft_rows), len(lm_rows))
    res = {"checked": n, "acc_mismatch": []}
    if any("acc_norm" in r for r in ft_rows):
        res["acc_norm_mismatch"] = []
    diffs = []
    for i in range(n):
        f, a = ft_rows[i], lm_rows[i]
        if f["acc"] != int(a["acc"]):
            res["acc_mismatch"].append(i)
        if "acc_norm_mismatch" in res and f.get("acc_norm") != int(a.get("acc_norm", -1)):
            res["acc_norm_mismatch"].append(i)
        if "ll" in f:
            diffs.append(abs(f["ll"] - a["ll"][0]))
    if diffs:
        res["ll_max_abs_diff"] = max(diffs)
    return res


def pct(x):
    return None if x is None else 100.0 * x


def fmt(x, w=7, p=1):
    return f"{x:{w}.{p}f}" if isinstance(x, (int, float)) else f"{'—':>{w}}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="a Hugging Face model folder")
    ap.add_argument("--data", default="../shared/data/general", help="the general/ task folder")
    ap.add_argument("--tasks", default=",".join(ALL_TASKS), help="comma-separated, lm-eval's names")
    ap.add_argument("--limit", type=int, default=None, help="first N docs per task (MMLU: see above); all if absent")
    ap.add_argument("--ftedit-json", help="the output of `ftedit health --json --general N`")
    ap.add_argument("--ftedit-per-doc", metavar="PATTERN",
                    help="optional: `ftedit health --json --general k` outputs for k = 1..limit, "
                    "the path with {k} for k; per-doc verdicts follow from the running counts")
    ap.add_argument("--out", help="write the comparison here as JSON")
    ap.add_argument("--batch-size", type=int, default=1, help="lm-eval batch size (1: no padding)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = Path(tempfile.mkdtemp(prefix="lm_eval_parity_"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf_datasets")  # no stale caches

    import torch

    torch.set_num_threads(args.threads)
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager
    import transformers  # after lm_eval.tasks, which re-imports it

    # lm-eval 0.4.9.x names AutoModelForVision2Seq (for its VLM class, unused here) when
    # lm_eval.models is imported; transformers 5 removed it for AutoModelForImageTextToText.
    if not hasattr(transformers, "AutoModelForVision2Seq") and hasattr(transformers, "AutoModelForImageTextToText"):
        transformers.AutoModelForVision2Seq = transformers.AutoModelForImageTextToText
    from lm_eval.evaluator import simple_evaluate

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in ALL_TASKS]
    if bad:
        sys.exit(f"unknown task(s) {bad}; tasks: {', '.join(ALL_TASKS)}")
    data = Path(args.data).resolve()
    lm_tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    names, limits = write_tasks(tmp, data, lm_tasks_dir, tasks, args.limit)

    t0 = time.time()
    res = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(Path(args.model_dir).resolve()), "dtype": "float32", "device": args.device},
        tasks=["lm_eval_parity"],
        num_fewshot=0,
        batch_size=args.batch_size,
        limit=args.limit,
        bootstrap_iters=0,
        log_samples=True,
        task_manager=TaskManager(include_path=str(tmp), include_defaults=False),
    )
    seconds = time.time() - t0

    lm = {}
    docs = {}
    examples = {}
    for t in tasks:
        if t == "mmlu":
            subj = {}
            tot_n, tot_acc = 0, 0.0
            for s, k in limits.items():
                name = f"{PREFIX}mmlu_{s}"
                r = res["results"][name]
                n = len(res["samples"][name])
                subj[s] = {"acc": pct(r["acc,none"]), "n": n}
                tot_n += n
                tot_acc += r["acc,none"] * n
                docs[f"mmlu_{s}"] = per_doc(res["samples"][name], "multiple_choice")
                examples[f"mmlu_{s}"] = example(res["samples"][name])
            lm[t] = {"acc": pct(tot_acc / tot_n) if tot_n else None, "acc_norm": None, "n": tot_n, "subjects": subj}
            continue
        name = PREFIX + t
        r = res["results"][name]
        otype = "loglikelihood" if t == "lambada_openai" else "multiple_choice"
        lm[t] = {
            "acc": pct(r.get("acc,none")),
            "acc_norm": pct(r.get("acc_norm,none")),
            "n": len(res["samples"][name]),
        }
        if "perplexity,none" in r:
            lm[t]["perplexity"] = r["perplexity,none"]
        docs[t] = per_doc(res["samples"][name], otype)
        examples[t] = example(res["samples"][name])

    ft = {}
    if args.ftedit_json:
        with open(args.ftedit_json) as fh:
            ftj = json.load(fh)
        ft = (ftj.get("general") or {}).get("tasks") or {}

    per = ftedit_per_doc(args.ftedit_per_doc, args.limit, tasks) if args.ftedit_per_doc else {}

    rows = {}
    for t in tasks:
        f = ft.get(FTEDIT_NAME.get(t, t))
        a = lm[t]
        row = {"lm_eval": a, "ftedit": f}
        if f is not None:
            diff = {}
            for m in ("acc", "acc_norm", "perplexity"):
                if a.get(m) is not None and f.get(m) is not None:
                    diff[m] = f[m] - a[m]
            row["diff"] = diff
            row["same_n"] = f.get("n") == a["n"]
        if t in per:
            row["per_doc"] = compare_docs(t, per[t], lm_docs_in_order(t, docs, limits))
        if t in NOTES:
            row["note"] = NOTES[t]
        rows[t] = row

    # The table.
    head = "| task | n (lm-eval / ftedit) | lm-eval acc | acc_norm | ftedit acc | acc_norm | Δacc | Δacc_norm |"
    print(f"\nlm-eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else '?'} vs ftedit, "
          f"limit {args.limit}, model {args.model_dir}\n")
    print(head)
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for t, row in rows.items():
        a, f = row["lm_eval"], row["ftedit"] or {}
        dd = row.get("diff", {})
        label = t + (" (first 2,000, klosax text)" if t == "hellaswag" else "") + (" (12 subjects)" if t == "mmlu" else "")
        print(f"| {label} | {a['n']} / {f.get('n', '—')} | {fmt(a['acc'])} | {fmt(a['acc_norm'])} | "
              f"{fmt(f.get('acc'))} | {fmt(f.get('acc_norm'))} | {fmt(dd.get('acc'), 5)} | {fmt(dd.get('acc_norm'), 5)} |")
    if "lambada_openai" in rows:
        a, f = rows["lambada_openai"]["lm_eval"], rows["lambada_openai"]["ftedit"] or {}
        print(f"\nlambada_openai perplexity: lm-eval {fmt(a.get('perplexity'), 0, 4)}, ftedit {fmt(f.get('perplexity'), 0, 4)}")
    if "mmlu" in rows:
        print("mmlu subjects scored: " + ", ".join(f"{s} {v['n']} ({v['acc']:.1f})" for s, v in lm["mmlu"]["subjects"].items()))
    off = [t for t, r in rows.items() if r.get("diff") and any(abs(v) > 1e-9 for k, v in r["diff"].items() if k != "perplexity")]
    print("\ndisagreements (acc/acc_norm): " + (", ".join(off) if off else "none"))
    if per:
        print("per doc (ftedit's verdicts from its running counts at k = 1..limit):")
        for t, r in rows.items():
            pd = r.get("per_doc")
            if pd is None:
                continue
            bits = [f"{pd['checked']} docs", f"acc differs on {pd['acc_mismatch'] or 'none'}"]
            if "acc_norm_mismatch" in pd:
                bits.append(f"acc_norm differs on {pd['acc_norm_mismatch'] or 'none'}")
            if "ll_max_abs_diff" in pd:
                bits.append(f"log-likelihood max |diff| {pd['ll_max_abs_diff']:.2e} nats")
            print(f"  {t}: " + "; ".join(bits))
        off += [t for t, r in rows.items() if r.get("per_doc") and (r["per_doc"]["acc_mismatch"] or r["per_doc"].get("acc_norm_mismatch")) and t not in off]
    print(f"lm-eval took {seconds:.0f} s")

    if args.out:
        out = {
            "bench": "lm-eval-parity",
            "model_dir": str(args.model_dir),
            "limit": args.limit,
            "data": str(data),
            "ftedit_json": args.ftedit_json,
            "lm_eval": {
                "version": getattr(lm_eval, "__version__", None) or _dist_version("lm_eval"),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "datasets": datasets.__version__,
                "dtype": "float32",
                "device": args.device,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "seconds": round(seconds, 1),
                "config": {k: v for k, v in (res.get("config") or {}).items() if isinstance(v, (str, int, float, bool, type(None)))},
            },
            "mmlu_limits": limits,
            "tasks": rows,
            "disagreements": off,
            "lm_eval_first_requests": examples,
            "lm_eval_docs": docs,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"written to {args.out}")


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
