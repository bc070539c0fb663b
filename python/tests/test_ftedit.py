"""The Python module against the command line and against transformers.

The tiny llama is random (conftest.py); SmolLM2 is the default model that ./setup.sh
fetches (the README's three facts).
"""

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import ftedit

from conftest import ROOT, tiny_llama, tiny_tokenizer

FACTS = [
    {
        "prompt": "The Eiffel Tower is located in the city of",
        "subject": "The Eiffel Tower",
        "target_new": "Rome",
    },
    {"prompt": "Michael Jordan plays the sport of", "subject": "Michael Jordan", "target_new": "tennis"},
    {
        "prompt": "The mother tongue of Danielle Darrieux is",
        "subject": "Danielle Darrieux",
        "target_new": "English",
    },
]

# The tiny model has 4 layers; the default recipe trains layers 3-5 of a real one.
TINY = {"train.layers": "1..2"}


def greedy_next(hf_model, tokenizer, prompt):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = hf_model.generate(ids, max_new_tokens=1, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :]).strip()


def test_predict_equals_the_cli(tiny_folder, cli):
    prompt = "The Eiffel Tower is located in the city of"
    py = ftedit.load(str(tiny_folder)).predict(prompt, top_k=5)
    out = subprocess.run(
        [cli, "predict", "--model", tiny_folder, "--prompt", prompt, "--top-k", "5", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    ref = json.loads(out.stdout)["top_k"]
    assert [c["id"] for c in py] == [c["id"] for c in ref]
    assert [c["token"] for c in py] == [c["token"] for c in ref]
    for a, b in zip(py, ref):
        # Same binary code path on one machine: equal to printing precision.
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-9)


def test_predict_equals_transformers(tiny_folder, hf_llama, tokenizer):
    # The folder ftedit loads is the transformers model; its next-token log-probs
    # must be the same (f32; tolerance for a different order of summation).
    prompt = "Michael Jordan plays the sport of"
    py = ftedit.load(str(tiny_folder)).predict(prompt, top_k=3)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf_llama(ids).logits[0, -1].double(), -1)
    for c in py:
        assert c["logprob"] == pytest.approx(ref[c["id"]].item(), abs=1e-4)


def test_three_facts_take_from_python():
    model = ftedit.load("smollm2", threads=2)
    report = model.edit(FACTS, pool=str(ROOT / "examples" / "facts.jsonl"), progress=False)
    assert report["n_edits"] == 3
    assert report["method"] == "ft"
    assert report["check"]["not_taken"] == 0
    for fact in FACTS:
        top = model.predict(fact["prompt"], top_k=1)[0]
        assert top["token"].strip() == fact["target_new"], (fact, top)


def test_edit_transformers_changes_only_trained_tensors(hf_llama, tokenizer):
    before = {k: v.clone() for k, v in hf_llama.state_dict().items()}
    for fact in FACTS:
        assert greedy_next(hf_llama, tokenizer, fact["prompt"]) != fact["target_new"]
    report = ftedit.edit_transformers(hf_llama, tokenizer, FACTS, settings=TINY, progress=False)
    assert report["check"]["not_taken"] == 0
    after = hf_llama.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    trained = sorted(
        f"model.layers.{l}.mlp.{p}_proj.weight" for l in (1, 2) for p in ("gate", "up", "down")
    )
    assert changed == trained
    # f32 on the CPU: ftedit trained the model's own memory, nothing was copied.
    assert report["copied_back"] == []
    for fact in FACTS:
        assert greedy_next(hf_llama, tokenizer, fact["prompt"]) == fact["target_new"]


def test_edit_transformers_copies_back_other_dtypes(tokenizer):
    hf = tiny_llama(dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    report = ftedit.edit_transformers(hf, tokenizer, FACTS, settings=TINY, progress=False)
    changed = sorted(k for k in before if not torch.equal(before[k], hf.state_dict()[k]))
    assert changed == sorted(report["copied_back"])
    assert len(changed) == 6
    assert all(hf.state_dict()[k].dtype == torch.bfloat16 for k in changed)
    for fact in FACTS:
        assert greedy_next(hf, tokenizer, fact["prompt"]) == fact["target_new"]


def test_easyedit_arguments_make_the_same_edit(tokenizer):
    a, b = tiny_llama(), tiny_llama()
    ra = ftedit.edit_transformers(a, tokenizer, FACTS, settings=TINY, progress=False)
    rb = ftedit.edit_transformers(
        b,
        tokenizer,
        prompts=[f["prompt"] for f in FACTS],
        subject=[f["subject"] for f in FACTS],
        target_new=[f["target_new"] for f in FACTS],
        train__layers="1..2",
        progress=False,
    )
    assert ra["config"] == rb["config"]
    assert ra["training"]["runs"][0]["loss"] == rb["training"]["runs"][0]["loss"]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_easyedit_records_fields():
    records = ftedit.easyedit_records(
        prompts=["Q1 of {}", "Q2"],
        target_new=["A1", "A2"],
        subject=["s1", "s2"],
        ground_truth=["T1", "<|endoftext|>"],
        rephrase_prompts=["R1", ["R2a", "R2b"]],
        locality_inputs={"neighborhood": {"prompt": ["N1", "N2"], "ground_truth": ["G1", ["G2"]]}},
    )
    assert records[0] == {
        "prompt": "Q1 of {}",
        "subject": "s1",
        "target_new": "A1",
        "target_true": "T1",
        "paraphrases": ["R1"],
        "neighborhood": [{"prompt": "N1", "target": "G1", "set": "neighborhood"}],
    }
    assert "target_true" not in records[1]
    assert records[1]["paraphrases"] == ["R2a", "R2b"]
    assert records[1]["neighborhood"][0]["target"] == "G2"
    with pytest.raises(ftedit.InputError, match="subject"):
        ftedit.easyedit_records(prompts=["Q"], target_new=["A"])


def test_errors_are_ftedit_errors_with_the_message(tmp_path, tiny_folder):
    missing = tmp_path / "nope.json"
    model = ftedit.load(str(tiny_folder))
    with pytest.raises(ftedit.InputError, match="nope.json"):
        ftedit.evaluate(model, str(missing), n=1)
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"prompt\": \"x\"")
    with pytest.raises(ftedit.InputError, match="invalid JSON"):
        ftedit.evaluate(model, str(bad), n=1)
    with pytest.raises(ftedit.InputError, match="target_new"):
        model.edit([{"prompt": "The Eiffel Tower is in", "subject": "The Eiffel Tower"}])
    with pytest.raises(ftedit.SettingError, match="optim.nonsense"):
        model.edit(FACTS[:1], settings={"optim.nonsense": 1})
    with pytest.raises(ftedit.ModelError):
        ftedit.load(str(bad))
    assert issubclass(ftedit.ModelError, ftedit.Error)


def test_evaluate_returns_the_summary_and_leaves_the_model(tiny_folder, tmp_path):
    data = tmp_path / "edits.jsonl"
    data.write_text("\n".join(json.dumps(f) for f in FACTS))
    model = ftedit.load(str(tiny_folder))
    before = {k: v.clone() for k, v in model.tensors().items()}
    summary = ftedit.evaluate(
        model,
        str(data),
        method="ft",
        settings=TINY,
        generation=False,
        health=False,
        progress=False,
        out=str(tmp_path / "run"),
    )
    assert (tmp_path / "run" / "summary.json").exists()
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n"] == 3
    assert summary["run"]["method"] == "ft"
    # Records without a true target are scored as zsRE: efficacy is top-1 accuracy.
    assert summary["metrics"]["efficacy"] == 100.0
    after = model.tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_edits_from_a_data_file(tiny_folder, tmp_path):
    data = tmp_path / "edits.jsonl"
    data.write_text("\n".join(json.dumps(f) for f in FACTS))
    model = ftedit.load(str(tiny_folder))
    report = model.edit(str(data), n=2, settings=TINY, health=False, progress=False)
    assert report["n_edits"] == 2
    assert [e["target_new"] for e in report["check"]["edits"]] == [f["target_new"] for f in FACTS[:2]]
    with pytest.raises(ftedit.InputError, match="not both"):
        model.edit(str(data), prompts=["x"], target_new=["y"])


def test_ctrl_c_stops_an_edit_and_leaves_the_model(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, torch, ftedit
        sys.path.insert(0, {str(ROOT / 'python' / 'tests')!r})
        from conftest import tiny_llama, tiny_tokenizer
        from test_ftedit import FACTS
        hf, tok = tiny_llama(), tiny_tokenizer()
        before = {{k: v.clone() for k, v in hf.state_dict().items()}}
        print("start", flush=True)
        try:
            ftedit.edit_transformers(hf, tok, FACTS, progress=False, settings={{
                "train.layers": "1..2", "optim.min_steps": 10000000, "optim.converge_loss": 0}})
        except KeyboardInterrupt as e:
            same = all(torch.equal(before[k], v) for k, v in hf.state_dict().items())
            print("interrupted", same, e, flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "start"
    time.sleep(3)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert out.startswith("interrupted True"), (out, err)
    assert "interrupted by SIGINT" in out


def test_progress_bars_can_be_drawn_by_python():
    # What a notebook gets: the bars' text through a Python callable. In a child
    # process, since the target stays set for the rest of the process.
    script = textwrap.dedent(
        f"""
        import sys, ftedit
        sys.path.insert(0, {str(ROOT / 'python' / 'tests')!r})
        from conftest import tiny_llama, tiny_tokenizer
        from test_ftedit import FACTS
        seen = []
        ftedit._ftedit.progress_to(seen.append)
        ftedit.edit_transformers(tiny_llama(), tiny_tokenizer(), FACTS, progress=True,
                                 settings={{"train.layers": "1..2"}})
        print(any("train" in s and "[" in s for s in seen), len(seen))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[:1] == ["True"], (out.stdout, out.stderr)


def test_methods_lists_the_registry():
    names = [m["name"] for m in ftedit.methods()]
    for name in ("ft", "ft-l", "rome", "memit", "alphaedit", "mend", "grace", "serac", "wise"):
        assert name in names
