//! `ftedit._ftedit`: the native half of the `ftedit` Python package. It only converts:
//! Python arguments to the crate's types, the crate's errors to Python exceptions,
//! tensors through `pyo3-tch` (shared with the user's `torch`, not copied), and results
//! to JSON text that `ftedit/__init__.py` turns into dicts. The work is the crate's.

// Python's keyword arguments map one to one onto a function's parameters.
#![allow(clippy::too_many_arguments)]

use std::path::{Path, PathBuf};

use ftedit::data::{EditRecord, Format};
use ftedit::edit::{self, BuildOptions, MethodConfig};
use ftedit::eval::health::{GeneralOptions, HealthOptions, Probe};
use ftedit::model::{GenerateOptions, Sampling, Snapshot, generate, save};
use ftedit::{LoadOptions, Tokenizer, runtime};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use serde_json::{Value as Json, json};

create_exception!(
    _ftedit,
    Error,
    PyException,
    "Every error ftedit raises; the message is the command line's one-line error."
);
create_exception!(
    _ftedit,
    InputError,
    Error,
    "Bad input: a data file or edit records that cannot be read, or a missing file."
);
create_exception!(
    _ftedit,
    ModelError,
    Error,
    "A model that cannot be loaded: unsupported architecture, missing or misshapen tensors."
);
create_exception!(
    _ftedit,
    SettingError,
    Error,
    "A bad method, recipe or setting."
);
create_exception!(
    _ftedit,
    OutputError,
    Error,
    "Nowhere to write: the output exists, is locked, or has no room."
);

/// The Python exception for a crate error, with its one-line message.
fn py_err(e: ftedit::Error) -> PyErr {
    use ftedit::Error as E;
    let message = e.to_string();
    let kind = match &e {
        E::AtRecord { inner, .. } => inner.as_ref(),
        other => other,
    };
    match kind {
        E::Interrupted { .. } => PyKeyboardInterrupt::new_err(message),
        E::Io { .. } | E::Data { .. } | E::Record { .. } | E::Input(_) => {
            InputError::new_err(message)
        }
        E::ContextOverflow { .. } => InputError::new_err(message),
        E::Format { .. }
        | E::UnsupportedType { .. }
        | E::UnknownArchitecture(_)
        | E::Config(_)
        | E::MissingTensor { .. }
        | E::ShapeMismatch { .. }
        | E::Corrupt { .. }
        | E::Tokenizer(_) => ModelError::new_err(message),
        E::Setting { .. } | E::NoMatch(_) => SettingError::new_err(message),
        E::Output { .. } | E::Locked { .. } => OutputError::new_err(message),
        _ => Error::new_err(message),
    }
}

trait OrPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for ftedit::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

impl<T> OrPy<T> for Result<T, tch::TchError> {
    fn py(self) -> PyResult<T> {
        self.map_err(|e| py_err(e.into()))
    }
}

fn json_text(v: &Json) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| Error::new_err(e.to_string()))
}

fn input(message: impl Into<String>) -> PyErr {
    InputError::new_err(message.into())
}

/// A loaded model and its tokenizer.
// Unsendable: an adapter (GRACE) is reference-counted for one thread. Work runs with
// the GIL held, on the thread that made the model.
#[pyclass(name = "Model", module = "ftedit._ftedit", unsendable)]
struct PyModel {
    model: ftedit::Model,
    tok: Tokenizer,
}

/// Loads a GGUF file, a Hugging Face folder or a default model by name, with the
/// adapter an editor beside the weights left there.
#[pyfunction]
#[pyo3(signature = (model, device = "cpu", dtype = "f32", threads = 0))]
fn load(model: &str, device: &str, dtype: &str, threads: i32) -> PyResult<PyModel> {
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    let opts = LoadOptions {
        device: runtime::parse_device(device).py()?,
        kind: runtime::parse_kind(dtype).py()?,
    };
    let path = ftedit::model::registry::resolve(model).py()?;
    let (mut model, tok) = ftedit::load(&path, &opts).py()?;
    edit::registry::load_adapter(&mut model, &path).py()?;
    Ok(PyModel { model, tok })
}

/// Builds a model over a `transformers` model's tensors (`(name, tensor)` pairs of its
/// state dict), its `config.json` text and its `tokenizer.json` text. Tensors already in
/// `dtype` on `device` are shared, not copied.
#[pyfunction]
#[pyo3(signature = (config, tensors, tokenizer, chat_template = None, device = "cpu", dtype = "f32", source = "<transformers>"))]
fn from_state_dict(
    config: &str,
    tensors: Vec<(String, PyTensor)>,
    tokenizer: &str,
    chat_template: Option<String>,
    device: &str,
    dtype: &str,
    source: &str,
) -> PyResult<PyModel> {
    let config: Json =
        serde_json::from_str(config).map_err(|e| ModelError::new_err(format!("config: {e}")))?;
    let opts = LoadOptions {
        device: runtime::parse_device(device).py()?,
        kind: runtime::parse_kind(dtype).py()?,
    };
    let id = |k: &str| config.get(k).and_then(Json::as_u64).map(|v| v as u32);
    let tok = Tokenizer::from_hf_json(
        tokenizer,
        id("bos_token_id"),
        id("eos_token_id"),
        chat_template,
    )
    .py()?;
    let model = ftedit::model::from_hf_tensors(
        &config,
        tensors.into_iter().map(|(n, t)| (n, t.0)),
        &opts,
        Path::new(source),
    )
    .py()?;
    Ok(PyModel { model, tok })
}

/// Every editing method and its recipes, as JSON.
#[pyfunction]
fn methods() -> PyResult<String> {
    let list: Vec<Json> = edit::registry::METHODS
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "about": m.about,
                "default_recipe": m.default_recipe,
                "recipes": edit::registry::recipes_of(m.name),
            })
        })
        .collect();
    json_text(&Json::Array(list))
}

/// The edits: JSON text (a list of objects in ftedit's JSONL fields) or, with `file`,
/// a data file of any format `ftedit edit --edits` reads, of which the first `n`.
fn records(edits: &str, file: bool, n: Option<usize>) -> PyResult<Vec<EditRecord>> {
    let (records, origin) = if file {
        let all = ftedit::data::load(edits, None).py()?;
        (all, edits.to_owned())
    } else {
        let items: Vec<Json> =
            serde_json::from_str(edits).map_err(|e| input(format!("edits: invalid JSON: {e}")))?;
        let records = ftedit::data::parse(&items, Format::Jsonl, Path::new("edits")).py()?;
        (records, "edits".to_owned())
    };
    let records = ftedit::data::Selection {
        first: n,
        range: None,
        shard: None,
    }
    .apply(records);
    if records.is_empty() {
        return Err(input(format!("{origin}: no edits given")));
    }
    let problems = ftedit::data::edit_problems(&records);
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(input(format!("{origin}: {}", text.join("; "))));
    }
    Ok(records)
}

/// The weights (and adapter) as they are, to put back if an edit is stopped.
struct Saved {
    snapshot: Snapshot,
    adapter: Option<ftedit::model::adapter::SharedAdapter>,
}

impl Saved {
    fn take(model: &ftedit::Model, names: Option<Vec<String>>) -> PyResult<Self> {
        Ok(Saved {
            snapshot: match names {
                Some(n) => model.params.snapshot_of(&n).py()?,
                None => model.params.snapshot(),
            },
            adapter: model.adapter().cloned(),
        })
    }

    fn restore(&self, model: &mut ftedit::Model) -> PyResult<()> {
        model.params.restore(&self.snapshot).py()?;
        model.set_adapter(self.adapter.clone());
        Ok(())
    }
}

/// Runs `work` with the GIL released, on this thread. libtorch refuses a backward pass
/// while the GIL is held once `torch` is imported (its Python autograd engine is the
/// default then), and other Python threads may run meanwhile.
fn without_gil<T>(py: Python<'_>, work: impl FnOnce() -> T) -> T {
    struct Here<F>(F);
    // SAFETY: `allow_threads` runs the closure on the calling thread (it only releases
    // the GIL), so the model's thread-bound parts (an `Rc` adapter) never leave it;
    // `Send` is asked for by the bound alone. The model is an unsendable pyclass: no
    // other thread can reach it meanwhile.
    unsafe impl<F> Send for Here<F> {}
    impl<F> Here<F> {
        fn take(self) -> F {
            self.0
        }
    }
    let job = Here(work);
    py.allow_threads(move || Here(job.take()())).take()
}

/// Runs `work` with Ctrl-C held and the GIL released: a training loop stops at its next
/// step, anything else at its end; either way the model is put back as `saved` has it
/// and `KeyboardInterrupt` is raised.
fn interruptible<T>(
    py: Python<'_>,
    model: &mut ftedit::Model,
    saved: &Saved,
    work: impl FnOnce(&mut ftedit::Model) -> ftedit::Result<T>,
) -> PyResult<T> {
    let held = ftedit::output::HoldSignals::new();
    let result = without_gil(py, || {
        let r = work(model);
        let late = ftedit::output::interrupted();
        r.and_then(|v| late.map(|()| v))
    });
    drop(held);
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            saved.restore(model)?;
            Err(py_err(e))
        }
    }
}

#[pymethods]
impl PyModel {
    /// The model's path or name.
    #[getter]
    fn source(&self) -> String {
        self.model.source.display().to_string()
    }

    /// The architecture's name (llama, gemma3, gpt2, ...).
    #[getter]
    fn arch(&self) -> &'static str {
        self.model.arch_name()
    }

    /// The number of parameters.
    #[getter]
    fn num_parameters(&self) -> usize {
        self.model.params.numel()
    }

    /// The next-token distribution after `prompt`: JSON with the `top_k` tokens.
    #[pyo3(signature = (prompt, top_k = 10, chat = false))]
    fn predict(&self, prompt: &str, top_k: usize, chat: bool) -> PyResult<String> {
        let ids = self.prompt_ids(prompt, chat)?;
        let logprobs = self.model.next_token_logprobs(&ids).py()?;
        let k = top_k.clamp(1, logprobs.size()[0] as usize);
        let (vals, idx) = logprobs.topk(k as i64, -1, true, true);
        let top = (
            Vec::<f64>::try_from(vals).py()?,
            Vec::<i64>::try_from(idx).py()?,
        );
        let top_k: Vec<Json> = top
            .1
            .iter()
            .zip(&top.0)
            .map(|(&id, &lp)| {
                json!({"id": id, "token": self.tok.decode(&[id as u32]), "prob": lp.exp(), "logprob": lp})
            })
            .collect();
        json_text(&json!({"prompt": prompt, "input_ids": ids, "top_k": top_k}))
    }

    /// A continuation of `prompt`: greedy, or top-k sampling with `top_k`.
    #[pyo3(signature = (prompt, chat = false, max_tokens = 32, top_k = None, temperature = 1.0, seed = 0))]
    fn generate(
        &self,
        py: Python<'_>,

        prompt: &str,
        chat: bool,
        max_tokens: usize,
        top_k: Option<usize>,
        temperature: f64,
        seed: u64,
    ) -> PyResult<String> {
        let ids = self.prompt_ids(prompt, chat)?;
        let opts = GenerateOptions {
            max_new_tokens: max_tokens,
            sampling: match top_k {
                Some(k) => Sampling::TopK { k, temperature },
                None => Sampling::Greedy,
            },
            seed,
            row_seeds: None,
            stop: if chat {
                self.tok.turn_ends()
            } else {
                self.tok.eos_id.into_iter().collect()
            },
        };
        let out = without_gil(py, || {
            generate(&self.model, std::slice::from_ref(&ids), &opts)
        })
        .py()?
        .remove(0);
        Ok(self.tok.decode(&out))
    }

    /// Edits the model in place; returns the report `ftedit edit` writes, as JSON.
    #[pyo3(signature = (edits, method = None, recipe = None, settings = Vec::new(), pool = None, health = true, general = 0, neighbours = 5, progress = true, file = false, n = None))]
    fn edit(
        &mut self,
        py: Python<'_>,

        edits: &str,
        method: Option<&str>,
        recipe: Option<&str>,
        settings: Vec<String>,
        pool: Option<PathBuf>,
        health: bool,
        general: usize,
        neighbours: usize,
        progress: bool,
        file: bool,
        n: Option<usize>,
    ) -> PyResult<String> {
        let records = records(edits, file, n)?;
        let config = self.method_config(method, recipe, "ft", &settings)?;
        if config.method() == "none" {
            return Err(SettingError::new_err(
                "method none does not edit; pick a method (ftedit.methods())",
            ));
        }
        let build = BuildOptions {
            exclude: &records,
            pool,
            progress,
            resume: None,
        };
        let mut editor = edit::build(&config, &self.tok, &build).py()?;
        let probe = if health { self.probe(general)? } else { None };
        let saved = Saved::take(&self.model, editor.writes(&self.model).py()?)?;
        let start = std::time::Instant::now();
        let tok = &self.tok;
        let applied = interruptible(py, &mut self.model, &saved, |model| {
            ftedit::protocols::apply::apply(
                model,
                tok,
                &records,
                editor.as_mut(),
                probe.as_ref(),
                neighbours,
            )
        })?;
        let report = json!({
            "model": self.source(),
            "n_edits": records.len(),
            "method": config.method(),
            "config": serde_json::to_value(&config).map_err(|e| Error::new_err(e.to_string()))?,
            "recipe": config.to_toml(),
            "training": applied.training,
            "health": applied.health,
            "check": applied.check,
            "seconds": start.elapsed().as_secs_f64(),
            "timing": applied.timing,
        });
        json_text(&report)
    }

    /// Writes the model: a `.gguf` path (GGUF input only) or a folder for transformers.
    #[pyo3(signature = (path, dtype = None, force = false))]
    fn save(
        &self,
        py: Python<'_>,
        path: PathBuf,
        dtype: Option<&str>,
        force: bool,
    ) -> PyResult<()> {
        let source = self.model.source.clone();
        let dest = save::Destination::check(&path, &source, force).py()?;
        let gguf = dest.format == save::OutputFormat::Gguf;
        let kind = dtype.map(runtime::parse_kind).transpose().py()?;
        if gguf && kind.is_some() {
            return Err(SettingError::new_err(
                "dtype is for folder output; a .gguf keeps its tensors' types",
            ));
        }
        let _held = ftedit::output::HoldSignals::new();
        let write = || -> ftedit::Result<()> {
            let kind = match kind {
                Some(k) => k,
                None if source.exists() => ftedit::model::stored_dtype(&source)?,
                None => self.model.kind(),
            };
            save::save_to(&self.model, &self.tok, &dest, &source, kind, false)?;
            Ok(())
        };
        without_gil(py, write).py()
    }

    /// The model's health (perplexity, known facts, general abilities on `general`
    /// items per task), alone or against `against` (the unedited model), as JSON.
    #[pyo3(signature = (general = 100, against = None))]
    fn health(
        &self,
        py: Python<'_>,
        general: usize,
        against: Option<PyRef<'_, PyModel>>,
    ) -> PyResult<String> {
        let probe = self.probe(general)?.ok_or_else(|| {
            input(format!(
                "no health check: {} is missing (set FTEDIT_DATA to the data folder)",
                HealthOptions::default().text.display()
            ))
        })?;
        let base_model = against.as_ref().map(|a| &a.model);
        let none = Default::default();
        let health = without_gil(py, || -> ftedit::Result<_> {
            Ok(match base_model {
                Some(b) => {
                    let base = probe.baseline(b, &none)?;
                    probe.measure(&self.model, &base)?
                }
                None => probe.unedited(&probe.baseline(&self.model, &none)?),
            })
        })
        .py()?;
        json_text(&serde_json::to_value(&health).map_err(|e| Error::new_err(e.to_string()))?)
    }

    /// The parameters by name, as torch tensors sharing the model's storage.
    fn tensors(&self) -> Vec<(String, PyTensor)> {
        self.model
            .params
            .iter()
            .map(|(n, t)| (n.to_owned(), PyTensor(t.shallow_clone())))
            .collect()
    }

    /// Evaluates edits of `data` under `protocol`, then puts the weights back; the run
    /// folder's summary.json, as JSON.
    #[pyo3(signature = (data, out, n = None, method = None, recipe = None, settings = Vec::new(), protocol = "batch", batch_size = 1, generation = true, exact_match = true, chat = None, health = true, general = 10, progress = true, format = None))]
    fn evaluate(
        &mut self,
        py: Python<'_>,

        data: PathBuf,
        out: PathBuf,
        n: Option<usize>,
        method: Option<&str>,
        recipe: Option<&str>,
        settings: Vec<String>,
        protocol: &str,
        batch_size: usize,
        generation: bool,
        exact_match: bool,
        chat: Option<bool>,
        health: bool,
        general: usize,
        progress: bool,
        format: Option<&str>,
    ) -> PyResult<String> {
        use ftedit::eval::run_dir::{OutputDir, RunInfo};
        let protocol = ftedit::protocols::Protocol::parse(protocol, batch_size, None).py()?;
        let format = format
            .map(|f| {
                f.parse::<Format>()
                    .map_err(|e| input(format!("format: {e}")))
            })
            .transpose()?;
        let selection = ftedit::data::Selection {
            first: n,
            range: None,
            shard: None,
        };
        let records = selection.apply(ftedit::data::load(&data, format).py()?);
        if records.is_empty() {
            return Err(input(format!(
                "no records selected from {}",
                data.display()
            )));
        }
        let config = self.method_config(method, recipe, "none", &settings)?;
        let has_template = self.tok.chat_template.is_some();
        if chat == Some(true) && !has_template {
            return Err(SettingError::new_err(
                "chat: this model has no chat template",
            ));
        }
        let opts = ftedit::eval::EvalOptions {
            exact_match,
            generation,
            generation_ids: None,
            seed: 0,
            attributes: None,
            chunk: 16,
            progress,
            health: if health { self.probe(general)? } else { None },
            curve_sample: 200,
            chat: chat.unwrap_or(has_template && generation),
            locality: true,
        };
        let build = BuildOptions {
            exclude: &records,
            pool: None,
            progress,
            resume: Some(ftedit::edit::ft::resume::ResumePoint {
                dir: out.join(ftedit::eval::run_dir::TRAIN_RESUME),
                every: std::time::Duration::from_secs(600),
            }),
        };
        let mut editor = edit::build(&config, &self.tok, &build).py()?;
        let run = RunInfo {
            model: self.source(),
            data: data.display().to_string(),
            method: editor.name().to_owned(),
            protocol: protocol.name().to_owned(),
            settings: json!({
                "n": n, "batch_size": batch_size, "generation": generation,
                "exact_match": exact_match, "config": serde_json::to_value(&config)
                    .map_err(|e| Error::new_err(e.to_string()))?,
            }),
        };
        let dir = OutputDir::open(&out, Some(&run)).py()?;
        dir.write_file("recipe.toml", &config.to_toml()).py()?;
        // One copy of the weights: restored on an error and after the run alike.
        let saved = Saved::take(&self.model, None)?;
        let tok = &self.tok;
        let outcome = interruptible(py, &mut self.model, &saved, |model| {
            ftedit::protocols::run(model, tok, &records, editor.as_mut(), protocol, &opts, &dir)
        })?;
        saved.restore(&mut self.model)?;
        dir.write_summary(Some(run), Some(outcome.timing), outcome.health)
            .py()?;
        let path = out.join("summary.json");
        std::fs::read_to_string(&path).map_err(|e| py_err(ftedit::Error::Io { path, source: e }))
    }
}

impl PyModel {
    /// The health probe with the default files (`general` items per downstream task);
    /// `None` when they are missing, and no downstream tasks when their folder is.
    fn probe(&self, general: usize) -> PyResult<Option<Probe>> {
        let d = HealthOptions::default();
        if !d.text.exists() {
            return Ok(None);
        }
        let g = GeneralOptions::default();
        let options = HealthOptions {
            known: d.known.clone().filter(|p| p.exists()),
            general: (general > 0 && g.dir.exists()).then_some(GeneralOptions {
                items: general,
                ..g
            }),
            ..d
        };
        Ok(Some(
            Probe::new(&self.tok, options, self.model.max_positions()).py()?,
        ))
    }

    /// The method `--method`/`--recipe`/`--set` would pick for this model;
    /// `fallback` when neither method nor recipe is given.
    fn method_config(
        &self,
        method: Option<&str>,
        recipe: Option<&str>,
        fallback: &str,
        settings: &[String],
    ) -> PyResult<MethodConfig> {
        MethodConfig::select(
            method,
            recipe,
            fallback,
            Some(self.model.arch_name()),
            settings,
        )
        .py()
    }

    fn prompt_ids(&self, prompt: &str, chat: bool) -> PyResult<Vec<u32>> {
        let ids = if chat {
            self.tok.chat_prompt(prompt)
        } else {
            self.tok.encode(prompt, true)
        }
        .py()?;
        if ids.is_empty() {
            return Err(input("the prompt tokenizes to nothing"));
        }
        Ok(ids)
    }
}

/// Draws progress bars by calling `write(text)` (a Python callable, such as
/// `sys.stderr.write` in a notebook) instead of on the terminal.
#[derive(Debug)]
struct PyWriter(Py<PyAny>);

impl PyWriter {
    fn write(&self, text: &str) -> std::io::Result<()> {
        Python::with_gil(|py| self.0.call1(py, (text,)).map(|_| ()))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

impl indicatif::TermLike for PyWriter {
    fn width(&self) -> u16 {
        100
    }
    // One bar redraws in place with a carriage return; cursor moves have no meaning
    // in a notebook's output.
    fn move_cursor_up(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _n: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write(&format!("\r{s}"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.write(&format!("\r{s}"))
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends progress bars to `write` (see [`PyWriter`]).
#[pyfunction]
fn progress_to(write: Py<PyAny>) {
    ftedit::progress::draw_to(indicatif::ProgressDrawTarget::term_like(Box::new(
        PyWriter(write),
    )));
}

#[pymodule]
fn _ftedit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("SettingError", py.get_type::<SettingError>())?;
    m.add("OutputError", py.get_type::<OutputError>())?;
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(from_state_dict, m)?)?;
    m.add_function(wrap_pyfunction!(methods, m)?)?;
    m.add_function(wrap_pyfunction!(progress_to, m)?)?;
    Ok(())
}
