"""ftedit: edit the facts a language model knows, by fine-tuning, and measure how well
each edit took.

The same editor as the ``ftedit`` command line (the work is done by its Rust core), on
a model file or on a ``transformers`` model you already hold::

    import ftedit

    model = ftedit.load("smollm2")
    report = model.edit([{"prompt": "The Eiffel Tower is in the city of",
                          "subject": "The Eiffel Tower", "target_new": "Rome"}])
    model.predict("The Eiffel Tower is in the city of")[0]["token"]   # ' Rome'

    # EasyEdit's argument names work as they are:
    model.edit(prompts=["The Eiffel Tower is in the city of"], subject=["The Eiffel Tower"],
               target_new=["Rome"])

    # A transformers model, edited in place:
    ftedit.edit_transformers(hf_model, tokenizer, edits)

Errors are :class:`Error` (and a subclass per kind) with the command line's one-line
message; Ctrl-C stops an edit and leaves the model as it was.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

TORCH_VERSION = "2.11.0"


def _check_torch() -> None:
    # The native module links libtorch; another torch's libraries in the same process
    # would crash it, so a mismatch is an ImportError that says what to do.
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"ftedit needs torch=={TORCH_VERSION} (pip install torch=={TORCH_VERSION}): {e}"
        ) from e
    found = torch.__version__.split("+")[0]
    if found != TORCH_VERSION:
        raise ImportError(
            f"ftedit was built for torch {TORCH_VERSION}, but torch {found} is installed: "
            f"install torch=={TORCH_VERSION}, or build ftedit against this torch"
        )


_check_torch()

from . import _ftedit  # noqa: E402
from ._ftedit import Error, InputError, ModelError, OutputError, SettingError  # noqa: E402

__all__ = [
    "Error",
    "InputError",
    "ModelError",
    "OutputError",
    "SettingError",
    "Model",
    "load",
    "methods",
    "evaluate",
    "edit_transformers",
    "easyedit_records",
]

Edit = Mapping[str, Any]
StrOrList = Union[str, Sequence[str]]

_progress_set = False


def _progress(progress: Optional[bool]) -> bool:
    """Whether to draw progress bars; in a notebook they are drawn there."""
    global _progress_set
    in_notebook = "ipykernel" in sys.modules
    if progress is None:
        progress = in_notebook or sys.stderr.isatty()
    if progress and in_notebook and not _progress_set:
        _ftedit.progress_to(lambda text: (sys.stderr.write(text), sys.stderr.flush()))
        _progress_set = True
    return progress


def _settings(settings: Optional[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> List[str]:
    """``KEY=VALUE`` overrides, as ``--set`` takes them. Keyword arguments spell a dot
    as a double underscore: ``optim__lr=1e-4`` is ``optim.lr=1e-4``."""
    merged = dict(settings or {})
    merged.update({k.replace("__", "."): v for k, v in kwargs.items()})

    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return json.dumps(list(v))
        return str(v)

    return [f"{k}={text(v)}" for k, v in merged.items()]


def _as_list(value: Optional[StrOrList], n: Optional[int] = None) -> Optional[List[Any]]:
    if value is None:
        return None
    if isinstance(value, str):
        return [value] * (n or 1) if n and n > 1 else [value]
    return list(value)


def easyedit_records(
    prompts: StrOrList,
    target_new: StrOrList,
    subject: Optional[StrOrList] = None,
    ground_truth: Optional[StrOrList] = None,
    rephrase_prompts: Optional[Sequence[Any]] = None,
    locality_inputs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    portability_inputs: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> List[dict]:
    """EasyEdit's ``editor.edit(...)`` arguments as ftedit's edit records (JSONL fields).

    ``prompts``, ``target_new``, ``subject`` and ``ground_truth`` hold one entry per
    edit; ``rephrase_prompts`` one paraphrase (or a list) per edit;
    ``locality_inputs`` / ``portability_inputs`` map a set name to
    ``{"prompt": [...], "ground_truth": [...]}`` with one entry per edit.
    """
    prompts = _as_list(prompts)
    n = len(prompts)
    targets = _as_list(target_new, n)
    if len(targets) != n:
        raise InputError(f"target_new: {len(targets)} entries for {n} prompts")
    subjects = _as_list(subject, n)
    if subjects is None:
        raise InputError("subject: ftedit needs each edit's subject (EasyEdit's `subject=`)")
    if len(subjects) != n:
        raise InputError(f"subject: {len(subjects)} entries for {n} prompts")
    truths = _as_list(ground_truth, n)
    rephrases = _as_list(rephrase_prompts, n)

    def per_edit(sets: Optional[Mapping[str, Mapping[str, Any]]], name: str, i: int):
        out = {}
        for set_name, fields in (sets or {}).items():
            ps = _as_list(fields.get("prompt"), n) or []
            gts = _as_list(fields.get("ground_truth"), n) or []
            if len(ps) != n or len(gts) != n:
                raise InputError(f"{name}/{set_name}: needs one prompt and one ground_truth per edit")
            out[set_name] = (ps[i], gts[i])
        return out

    records = []
    for i in range(n):
        r = {"prompt": prompts[i], "subject": subjects[i], "target_new": targets[i]}
        # EasyEdit fills a missing ground truth with this placeholder.
        if truths is not None and truths[i] not in (None, "<|endoftext|>"):
            r["target_true"] = truths[i]
        if rephrases is not None and rephrases[i] is not None:
            p = rephrases[i]
            r["paraphrases"] = [p] if isinstance(p, str) else list(p)
        neighbours = []
        for set_name, (p, gt) in per_edit(locality_inputs, "locality_inputs", i).items():
            ps = [p] if isinstance(p, str) else list(p)
            gts = [gt] if isinstance(gt, str) else list(gt)
            for k, prompt in enumerate(ps):
                target = gts[k] if k < len(gts) else gts[0]
                if isinstance(target, list):
                    target = target[0]
                neighbours.append({"prompt": prompt, "target": target, "set": set_name})
        if neighbours:
            r["neighborhood"] = neighbours
        portability = {
            set_name: {"prompt": p, "ground_truth": gt}
            for set_name, (p, gt) in per_edit(portability_inputs, "portability_inputs", i).items()
        }
        if portability:
            r["portability"] = portability
        records.append(r)
    return records


def _records(edits: Optional[Union[Edit, Iterable[Edit]]], easyedit: Mapping[str, Any]) -> str:
    given = {k: v for k, v in easyedit.items() if v is not None}
    if edits is not None and given:
        raise InputError(
            "give the edits either as records or as EasyEdit's arguments "
            f"({', '.join(sorted(given))}), not both"
        )
    if edits is None:
        if "prompts" not in given or "target_new" not in given:
            raise InputError("no edits given (records, or EasyEdit's prompts= and target_new=)")
        records = easyedit_records(**given)
    elif isinstance(edits, Mapping):
        records = [dict(edits)]
    else:
        records = [dict(e) for e in edits]
    return json.dumps(records)


class Model:
    """A model loaded by ftedit (see :func:`load`), with its tokenizer."""

    def __init__(self, inner: "_ftedit.Model") -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return f"ftedit.Model({self.source!r}, arch={self.arch!r}, {self.num_parameters:,} parameters)"

    @property
    def source(self) -> str:
        """The model's path, or name."""
        return self._inner.source

    @property
    def arch(self) -> str:
        """The architecture (llama, gemma3, gpt2, ...)."""
        return self._inner.arch

    @property
    def num_parameters(self) -> int:
        """The number of parameters."""
        return self._inner.num_parameters

    def predict(self, prompt: str, top_k: int = 10, chat: bool = False) -> List[dict]:
        """The ``top_k`` most probable next tokens after ``prompt``, most probable
        first: ``{"token", "id", "prob", "logprob"}`` each. With ``chat``, the prompt
        is a user turn through the model's chat template."""
        return json.loads(self._inner.predict(prompt, top_k, chat))["top_k"]

    def generate(
        self,
        prompt: str,
        chat: bool = False,
        max_tokens: int = 32,
        top_k: Optional[int] = None,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> str:
        """Continues ``prompt`` (greedily, or sampling among the ``top_k`` most probable
        tokens); returns the new text only. With ``chat``, the answer of the assistant
        to ``prompt`` as a user turn."""
        return self._inner.generate(prompt, chat, max_tokens, top_k, temperature, seed)

    def edit(
        self,
        edits: Optional[Union[str, "os.PathLike[str]", Edit, Iterable[Edit]]] = None,
        method: Optional[str] = None,
        recipe: Optional[str] = None,
        *,
        n: Optional[int] = None,
        settings: Optional[Mapping[str, Any]] = None,
        pool: Optional[str] = None,
        health: bool = True,
        general: int = 0,
        neighbours: int = 5,
        progress: Optional[bool] = None,
        prompts: Optional[StrOrList] = None,
        target_new: Optional[StrOrList] = None,
        subject: Optional[StrOrList] = None,
        ground_truth: Optional[StrOrList] = None,
        rephrase_prompts: Optional[Sequence[Any]] = None,
        locality_inputs: Optional[Mapping[str, Mapping[str, Any]]] = None,
        portability_inputs: Optional[Mapping[str, Mapping[str, Any]]] = None,
        **kwargs: Any,
    ) -> dict:
        """Edits the model in place and returns the report ``ftedit edit`` writes: each
        edit's probabilities before and after (``check``), the model's health against
        the unedited one (``health``; ``general`` items per downstream task), the
        training report and the recipe used.

        ``edits``: one record or a list, in ftedit's JSONL fields (``prompt`` with the
        subject or a ``{}`` for it, ``subject``, ``target_new``; optional
        ``target_true``, ``paraphrases``, ``neighborhood``), a data file's path
        (CounterFact, zsRE, KnowEdit, JSONL; its first ``n`` records), or EasyEdit's
        arguments (``prompts``, ``target_new``, ``subject``, ...). ``method``: a name from
        :func:`methods` (default: the recipe's, else ``ft``); ``recipe``: a built-in
        recipe or a TOML file; settings as ``settings={"optim.lr": 1e-4}`` or
        ``optim__lr=1e-4``. Ctrl-C stops the edit and leaves the model as it was.
        """
        easyedit = dict(
            prompts=prompts,
            target_new=target_new,
            subject=subject,
            ground_truth=ground_truth,
            rephrase_prompts=rephrase_prompts,
            locality_inputs=locality_inputs,
            portability_inputs=portability_inputs,
        )
        is_file = isinstance(edits, (str, os.PathLike))
        if is_file:
            given = sorted(k for k, v in easyedit.items() if v is not None)
            if given:
                raise InputError(
                    f"give the edits either as a file or as EasyEdit's arguments "
                    f"({', '.join(given)}), not both"
                )
            records = os.fspath(edits)
        else:
            if n is not None:
                raise InputError("n selects records of a data file; slice the list instead")
            records = _records(edits, easyedit)
        report = self._inner.edit(
            records,
            method,
            recipe,
            _settings(settings, kwargs),
            pool,
            health,
            general,
            neighbours,
            _progress(progress),
            is_file,
            n,
        )
        return json.loads(report)

    def save(self, path: str, dtype: Optional[str] = None, force: bool = False) -> None:
        """Writes the model: a ``.gguf`` path (GGUF input only; unchanged tensors keep
        their bytes) or a folder transformers loads (``dtype`` f32, bf16 or f16; default
        the input's). ``force`` replaces an earlier output of ftedit."""
        self._inner.save(str(path), dtype, force)

    def health(self, general: int = 100, against: Optional["Model"] = None) -> dict:
        """Perplexity, known facts and general abilities (``general`` items per
        downstream task, scored as lm-evaluation-harness does), alone or against
        ``against`` (the unedited model)."""
        return json.loads(self._inner.health(general, against._inner if against else None))

    def tensors(self) -> dict:
        """The parameters by their Hugging Face names, as torch tensors that share the
        model's memory."""
        return dict(self._inner.tensors())


def load(model: str = "smollm2", device: str = "cpu", dtype: str = "f32", threads: int = 0) -> Model:
    """Loads a GGUF file, a Hugging Face folder or a default model by name (smollm2,
    gemma3, ...), with an editor's adapter if one is beside it. ``device``: cpu, cuda,
    cuda:N or auto; ``dtype``: f32, bf16 or f16; ``threads``: libtorch's CPU threads
    (0: its default)."""
    return Model(_ftedit.load(str(model), device, dtype, threads))


def methods() -> List[dict]:
    """The editing methods: ``{"name", "about", "default_recipe", "recipes"}`` each."""
    return json.loads(_ftedit.methods())


def evaluate(
    model: Union[Model, str],
    data: str,
    n: Optional[int] = None,
    method: Optional[str] = None,
    protocol: str = "batch",
    *,
    recipe: Optional[str] = None,
    batch_size: int = 1,
    out: Optional[str] = None,
    generation: bool = True,
    exact_match: bool = True,
    chat: Optional[bool] = None,
    health: bool = True,
    general: int = 10,
    progress: Optional[bool] = None,
    format: Optional[str] = None,
    settings: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> dict:
    """Scores ``method``'s edits of the first ``n`` records of ``data`` (CounterFact,
    zsRE, KnowEdit or JSONL) under ``protocol`` (single, batch or sequential with
    ``batch_size``), as ``ftedit eval`` does; returns the summary. A loaded ``model``
    is left as it was. ``out``: the run folder (records.jsonl, summary.json, ...;
    resumed if it has records); without it a temporary one is used and removed.
    ``generation=False`` skips fluency (GE), the slow part; ``general``: items per
    downstream task in the health check (10, as ``ftedit eval``; 0: none)."""
    if not isinstance(model, Model):
        model = load(model)
    rest = (
        n,
        method,
        recipe,
        _settings(settings, kwargs),
        protocol,
        batch_size,
        generation,
        exact_match,
        chat,
        health,
        general,
        _progress(progress),
        format,
    )
    if out is not None:
        return json.loads(model._inner.evaluate(str(data), str(out), *rest))
    with tempfile.TemporaryDirectory(prefix="ftedit-eval-") as tmp:
        return json.loads(model._inner.evaluate(str(data), tmp + "/run", *rest))


def edit_transformers(
    hf_model: Any,
    tokenizer: Any,
    edits: Optional[Union[Edit, Iterable[Edit]]] = None,
    method: Optional[str] = None,
    recipe: Optional[str] = None,
    *,
    dtype: Optional[str] = None,
    health: bool = False,
    **kwargs: Any,
) -> dict:
    """Edits a loaded ``transformers`` model of a supported architecture in place.

    ftedit builds its model over ``hf_model``'s tensors (shared, not copied, when they
    are f32 on the CPU or already of ``dtype``; otherwise it trains in f32 and the
    tensors it changed are copied back) and edits as :meth:`Model.edit` does, with the
    same arguments; afterwards ``hf_model.generate`` gives the new facts. ``tokenizer``
    must be a fast tokenizer (it carries ``tokenizer.json``). Returns the report, with
    the names of the tensors whose new values were copied back under ``copied_back``.
    """
    import torch

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError("edit_transformers needs a fast tokenizer (use_fast=True)")
    first = next(hf_model.parameters())
    device = str(first.device)
    if dtype is None:
        dtype = "f32" if first.device.type == "cpu" else {
            torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"
        }.get(first.dtype, "f32")
    state = hf_model.state_dict()
    inner = _ftedit.from_state_dict(
        hf_model.config.to_json_string(use_diff=False),
        list(state.items()),
        backend.to_str(),
        getattr(tokenizer, "chat_template", None),
        device,
        dtype,
        f"<transformers {type(hf_model).__name__}>",
    )
    model = Model(inner)
    report = model.edit(edits, method, recipe, health=health, **kwargs)
    # Shared tensors were edited in place; the others (another dtype or device) get
    # the new values copied into them.
    copied = []
    with torch.no_grad():
        for name, t in inner.tensors():
            target = state.get(name)
            if target is None and name.startswith("transformer."):
                target = state.get(name[len("transformer."):])
            if target is None or t.data_ptr() == target.data_ptr():
                continue
            new = t.to(device=target.device, dtype=target.dtype)
            if not torch.equal(new, target):
                target.copy_(new)
                copied.append(name)
    report["copied_back"] = copied
    return report
