//! Data loaders on the shipped data sets and on damaged input, and the protocols'
//! bookkeeping (exact restore, resume, shards, the sequential curve, the health check).

mod common;

use common::{random_model, shared_dir, temp_dir, tiny_llama};
use ftedit::data::{self, EditRecord, Format, Selection, Suite};
use ftedit::eval::health::{HealthOptions, Probe};
use ftedit::eval::run_dir::OutputDir;
use ftedit::eval::{EvalOptions, Scores};
use ftedit::protocols::{self, Editor, NoEdit, Protocol};
use ftedit::report;
use ftedit::{Model, Tokenizer};
use tch::Kind;

fn data(file: &str) -> std::path::PathBuf {
    shared_dir().join("data").join(file)
}

#[test]
fn the_shipped_data_sets_load_in_full() {
    let cf = data::load(data("counterfact/counterfact_rome_dev.json"), None).unwrap();
    assert_eq!(cf.len(), 729);
    let r = &cf[0];
    assert_eq!((r.id.as_str(), r.suite), ("34", Suite::CounterFact));
    assert_eq!(r.rewrite_prompt(), "Laurent Cars was employed in");
    assert_eq!(
        (r.target_new.as_str(), r.target_true.as_deref()),
        ("Philadelphia", Some("Paris"))
    );
    assert_eq!(
        (
            r.paraphrases.len(),
            r.neighborhood.len(),
            r.generation_prompts.len()
        ),
        (2, 10, 10)
    );
    assert_eq!(r.neighborhood[0].target, "Paris");
    assert_eq!(
        (r.relation_id.as_deref(), r.target_new_id.as_deref()),
        (Some("P937"), Some("Q1345"))
    );

    let zs = data::load(data("zsre/zsre_eval_dev.json"), None).unwrap();
    assert_eq!(zs.len(), 637);
    assert_eq!(zs[0].suite, Suite::Zsre);
    assert_eq!(zs[0].prompt, "When was the inception of {}?");
    assert_eq!(
        zs[0].rewrite_prompt(),
        "When was the inception of IAAF Combined Events Challenge?"
    );
    assert_eq!(
        zs[0].neighborhood[0].prompt,
        "nq question: what is the name of the last episode of spongebob?"
    );
    assert_eq!(zs[0].target_new, "1998");
    assert_eq!(
        data::load(data("zsre/zsre_mend_train-1k.json"), None)
            .unwrap()
            .len(),
        1000
    );

    let mend = data::load(
        data("counterfact/easyedit_mend_format/counterfact-val.json"),
        None,
    )
    .unwrap();
    assert_eq!(mend.len(), 1919);
    assert_eq!(mend[0].prompt, "{}, by");
    assert_eq!(mend[0].target_true.as_deref(), Some("BBC"));
    assert_eq!(mend[0].neighborhood[0].prompt, "BBC Radio, by");
}

#[test]
fn malformed_records_are_named_by_file_index_and_field() {
    let dir = temp_dir("data-bad");
    let mut cf: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(data("counterfact/counterfact_rome_dev.json")).unwrap(),
    )
    .unwrap();
    cf.truncate(3);
    cf[2]["requested_rewrite"]["target_new"]
        .as_object_mut()
        .unwrap()
        .remove("str");
    let path = dir.join("cf.json");
    std::fs::write(&path, serde_json::to_string(&cf).unwrap()).unwrap();
    let err = data::load(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("cf.json")
            && err.contains("record 2")
            && err.contains("requested_rewrite/target_new/str"),
        "{err}"
    );

    let jsonl = dir.join("edits.jsonl");
    std::fs::write(&jsonl, "{\"prompt\": \"{} lives in\", \"subject\": \"Ann\", \"target_new\": \"Oslo\"}\n{\"prompt\": \"no subject slot\", \"subject\": \"Bob\", \"target_new\": \"Rome\"}\n").unwrap();
    let err = data::load(&jsonl, None).unwrap_err().to_string();
    assert!(
        err.contains("record 1")
            && err.contains("'prompt'")
            && err.contains("{}")
            && err.contains("\"Bob\""),
        "{err}"
    );

    std::fs::write(&jsonl, "{\"prompt\": \"{} lives in\", \"subject\": \"Ann\", \"target_new\": \"Oslo\"}\n{not json\n").unwrap();
    let err = data::load(&jsonl, None).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");

    let other = dir.join("known.json");
    std::fs::copy(data("counterfact/known_1000.json"), &other).unwrap();
    let err = data::load(&other, None).unwrap_err().to_string();
    assert!(err.contains("--format"), "{err}");
    assert!(
        data::load(dir.join("missing.json"), None)
            .unwrap_err()
            .to_string()
            .contains("missing.json")
    );
}

#[test]
fn jsonl_requests_and_selections() {
    let dir = temp_dir("data-jsonl");
    let path = dir.join("mine.jsonl");
    std::fs::write(
        &path,
        concat!(
            "{\"id\": \"a\", \"prompt\": \"{} plays\", \"subject\": \"Messi\", \"target_new\": \"tennis\", \"target_true\": \"football\", \"paraphrases\": [\"Messi is a player of\"], \"neighborhood\": [{\"prompt\": \"Ronaldo plays\", \"target\": \"football\"}]}\n",
            "\n",
            "{\"prompt\": \"The capital of {} is\", \"subject\": \"Peru\", \"target_new\": \"Cusco\"}\n",
            "{\"prompt\": \"Where is the Eiffel Tower? In the Eiffel Tower city of\", \"subject\": \"Eiffel Tower\", \"target_new\": \"Rome\"}\n",
        ),
    )
    .unwrap();
    let recs = data::load(&path, None).unwrap();
    assert_eq!(recs.len(), 3);
    // A question-style prompt with the subject written verbatim: its first mention
    // becomes the slot, and the prompt reads as given.
    assert_eq!(
        recs[2].prompt,
        "Where is the {}? In the Eiffel Tower city of"
    );
    assert_eq!(
        recs[2].rewrite_prompt(),
        "Where is the Eiffel Tower? In the Eiffel Tower city of"
    );
    assert_eq!(
        (recs[0].id.as_str(), recs[0].suite),
        ("a", Suite::CounterFact)
    );
    assert_eq!((recs[1].id.as_str(), recs[1].suite), ("1", Suite::Zsre));
    assert_eq!(recs[0].neighborhood[0].target, "football");
    assert_eq!(data::load(&path, Some(Format::Jsonl)).unwrap(), recs);

    let ids = |s: &Selection| {
        s.apply((0..10).map(|i| record(&i.to_string())).collect())
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&Selection {
            first: Some(3),
            ..Default::default()
        }),
        ["0", "1", "2"]
    );
    assert_eq!(
        ids(&Selection {
            range: Some((4, 7)),
            ..Default::default()
        }),
        ["4", "5", "6"]
    );
    assert_eq!(
        ids(&Selection {
            shard: Some((1, 3)),
            ..Default::default()
        }),
        ["1", "4", "7"]
    );
    assert_eq!(
        ids(&Selection {
            first: Some(5),
            shard: Some((0, 2)),
            ..Default::default()
        }),
        ["0", "2", "4"]
    );
    assert!(Selection::parse_shard("3/3").is_err());
    assert!(Selection::parse_range("5..2").is_err());
}

/// Evaluation without generation.
fn no_generation() -> EvalOptions {
    EvalOptions {
        generation: false,
        ..EvalOptions::default()
    }
}

/// Evaluation without generation or exact match: the suite's scores alone.
fn scores_only() -> EvalOptions {
    EvalOptions {
        exact_match: false,
        ..no_generation()
    }
}

fn record(id: &str) -> EditRecord {
    EditRecord {
        id: id.into(),
        suite: Suite::CounterFact,
        prompt: "{} works in".into(),
        subject: "Ann".into(),
        target_new: "the city".into(),
        target_true: Some("the sea".into()),
        paraphrases: vec!["So, Ann works in".into()],
        neighborhood: vec![data::Neighbor {
            prompt: "Bob works in".into(),
            target: "the sea".into(),
            set: None,
        }],
        attribute_prompts: vec![],
        generation_prompts: vec!["Ann's office is".into()],
        relation_id: None,
        target_new_id: None,
        portability: Vec::new(),
    }
}

/// An editor that scrambles every weight: only an exact restore undoes it.
struct Scramble;

impl Editor for Scramble {
    fn name(&self) -> &str {
        "scramble"
    }
    fn edit(&mut self, model: &mut Model, _: &Tokenizer, _: &[EditRecord]) -> ftedit::Result<()> {
        let _g = tch::no_grad_guard();
        for (_, t) in model.params.iter() {
            let _ = t.shallow_clone().g_add_(&(t.randn_like() * 0.5));
        }
        Ok(())
    }
}

/// An editor that reports each record it edited and fails at one id, as a run killed
/// mid-way would stop.
struct Logger {
    edited: Vec<String>,
    fail_at: Option<&'static str>,
}

impl Editor for Logger {
    fn name(&self) -> &str {
        "logger"
    }
    fn edit(&mut self, _: &mut Model, _: &Tokenizer, records: &[EditRecord]) -> ftedit::Result<()> {
        if records.iter().any(|r| Some(r.id.as_str()) == self.fail_at) {
            return Err(ftedit::Error::Input("stopped".into()));
        }
        self.edited.extend(records.iter().map(|r| r.id.clone()));
        Ok(())
    }
    fn report(&self) -> Option<serde_json::Value> {
        let runs: Vec<_> = self
            .edited
            .iter()
            .map(|id| serde_json::json!({ "id": id }))
            .collect();
        Some(serde_json::json!({ "method": "logger", "runs": runs }))
    }
}

fn reported_ids(out: &OutputDir) -> Vec<String> {
    out.train_runs()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_resumed_single_run_keeps_the_edit_reports_of_the_run_it_resumes() {
    let (mut m, tok, _) = tiny();
    let recs: Vec<EditRecord> = (0..4).map(|i| record(&i.to_string())).collect();
    let opts = scores_only();
    let out = OutputDir::open(temp_dir("proto-report"), None).unwrap();
    let mut run = |editor: &mut Logger, protocol| {
        protocols::run(&mut m, &tok, &recs, editor, protocol, &opts, &out)
    };
    // Stopped at the third record: the first two are in both files.
    let mut first = Logger {
        edited: vec![],
        fail_at: Some("2"),
    };
    assert!(run(&mut first, Protocol::Single).is_err());
    assert_eq!(out.records().unwrap().len(), 2);
    assert_eq!(reported_ids(&out), ["0", "1"]);
    // The resumed run edits only the rest, and the report holds all four.
    let mut second = Logger {
        edited: vec![],
        fail_at: None,
    };
    run(&mut second, Protocol::Single).unwrap();
    assert_eq!(second.edited, ["2", "3"]);
    assert_eq!(reported_ids(&out), ["0", "1", "2", "3"]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path.join("train_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["method"], "logger");
    // A batch run writes its report once, at the end.
    let out = OutputDir::open(temp_dir("proto-report-batch"), None).unwrap();
    let mut batch = Logger {
        edited: vec![],
        fail_at: None,
    };
    protocols::run(
        &mut m,
        &tok,
        &recs,
        &mut batch,
        Protocol::Batch,
        &opts,
        &out,
    )
    .unwrap();
    assert_eq!(reported_ids(&out), ["0", "1", "2", "3"]);
}

/// An editor that logs what it was told ahead and what it edited, in order.
#[derive(Default)]
struct Preparer(Vec<String>);

impl Editor for Preparer {
    fn name(&self) -> &str {
        "preparer"
    }
    fn changes_weights(&self) -> bool {
        false
    }
    fn prepare(&mut self, _: &Model, _: &Tokenizer, records: &[EditRecord]) -> ftedit::Result<()> {
        self.0.push(format!("prepare {}", records.len()));
        Ok(())
    }
    fn edit(&mut self, _: &mut Model, _: &Tokenizer, records: &[EditRecord]) -> ftedit::Result<()> {
        self.0
            .extend(records.iter().map(|r| format!("edit {}", r.id)));
        Ok(())
    }
}

#[test]
fn the_single_protocol_prepares_the_records_ahead_a_chunk_at_a_time() {
    let (mut m, tok, _) = tiny();
    let recs: Vec<EditRecord> = (0..20).map(|i| record(&i.to_string())).collect();
    let opts = scores_only();
    let out = OutputDir::open(temp_dir("proto-prepare"), None).unwrap();
    let mut editor = Preparer::default();
    protocols::run(
        &mut m,
        &tok,
        &recs,
        &mut editor,
        Protocol::Single,
        &opts,
        &out,
    )
    .unwrap();
    // 16 records ahead, their edits, then the last 4: a run killed while preparing loses
    // at most one chunk.
    let expected: Vec<String> = std::iter::once("prepare 16".to_string())
        .chain((0..16).map(|i| format!("edit {i}")))
        .chain(std::iter::once("prepare 4".to_string()))
        .chain((16..20).map(|i| format!("edit {i}")))
        .collect();
    assert_eq!(editor.0, expected);
    assert_eq!(out.records().unwrap().len(), 20);
}

fn tiny() -> (Model, Tokenizer, std::path::PathBuf) {
    let dir = temp_dir("proto-model");
    let path = dir.join("tiny.gguf");
    common::write_gguf(&random_model(tiny_llama(false), Kind::Float), &path, 64);
    let (m, t) = ftedit::load(&path, &ftedit::LoadOptions::default()).unwrap();
    (m, t, dir)
}

#[test]
fn single_protocol_restores_the_weights_bit_for_bit() {
    let (mut m, tok, _) = tiny();
    let before: Vec<tch::Tensor> = m.params.iter().map(|(_, t)| t.copy()).collect();
    let recs: Vec<EditRecord> = (0..3).map(|i| record(&i.to_string())).collect();
    let out = OutputDir::open(temp_dir("proto-single"), None).unwrap();
    let opts = no_generation();
    protocols::run(
        &mut m,
        &tok,
        &recs,
        &mut Scramble,
        Protocol::Single,
        &opts,
        &out,
    )
    .unwrap();
    for ((name, t), b) in m.params.iter().zip(&before) {
        assert!(t.equal(b), "{name} was not restored exactly");
    }
    assert_eq!(out.records().unwrap().len(), 3);
    // Batch editing does change the model.
    let out = OutputDir::open(temp_dir("proto-batch"), None).unwrap();
    protocols::run(
        &mut m,
        &tok,
        &recs,
        &mut Scramble,
        Protocol::Batch,
        &opts,
        &out,
    )
    .unwrap();
    assert!(!m.params.iter().zip(&before).all(|((_, t), b)| t.equal(b)));
}

#[test]
fn unedited_results_agree_across_protocols_shards_and_resumes() {
    let (mut m, tok, _) = tiny();
    let recs: Vec<EditRecord> = (0..5).map(|i| record(&i.to_string())).collect();
    let opts = EvalOptions::default();
    let mut run = |dir: &str, recs: &[EditRecord], p: Protocol| {
        let out = OutputDir::open(temp_dir(dir), None).unwrap();
        protocols::run(&mut m, &tok, recs, &mut NoEdit, p, &opts, &out).unwrap();
        out
    };
    let whole = run("proto-whole", &recs, Protocol::Batch)
        .records()
        .unwrap();
    assert_eq!(whole.len(), 5);
    assert!(
        whole
            .iter()
            .all(|r| r.generation.is_some() && r.exact.is_some())
    );
    let single = run("proto-single2", &recs, Protocol::Single)
        .records()
        .unwrap();
    let seq = run(
        "proto-seq",
        &recs,
        Protocol::Sequential {
            batch_size: 2,
            eval_every: Some(1),
        },
    )
    .records()
    .unwrap();
    for (a, b) in whole.iter().zip(&single).chain(whole.iter().zip(&seq)) {
        let (Scores::CounterFact(x), Scores::CounterFact(y)) = (&a.scores, &b.scores) else {
            panic!()
        };
        assert_eq!((x.es, x.ps, x.ns), (y.es, y.ps, y.ns));
        assert!((x.rewrite[0].nll_new - y.rewrite[0].nll_new).abs() < 1e-9);
        // Samples depend on the record, not on what it was batched with.
        assert_eq!(a.generation, b.generation);
    }

    // Two shards, merged, equal the whole run.
    let shard = |i| {
        Selection {
            shard: Some((i, 2)),
            ..Default::default()
        }
        .apply(recs.clone())
    };
    let d0 = run("proto-shard0", &shard(0), Protocol::Batch);
    let d1 = run("proto-shard1", &shard(1), Protocol::Batch);
    let merged_dir = temp_dir("proto-merged");
    let merged = report::merge(&[d0.path.clone(), d1.path.clone()], &merged_dir).unwrap();
    let whole_summary = ftedit::eval::Summary::new(&whole);
    assert_eq!(merged.summary.n, 5);
    for (k, v) in &whole_summary.metrics {
        let w = merged.summary.metrics[k];
        assert!(
            match (v, w) {
                (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                (None, None) => true,
                _ => false,
            },
            "{k}"
        );
    }

    // A run cut off after two records (and mid-line) resumes with the other three.
    let out = OutputDir::open(temp_dir("proto-resume"), None).unwrap();
    out.reset_records(&whole[..2]).unwrap();
    let mut text = std::fs::read_to_string(out.path.join("records.jsonl")).unwrap();
    text.push_str("{\"id\":\"2\",\"sui");
    std::fs::write(out.path.join("records.jsonl"), text).unwrap();
    protocols::run(
        &mut m,
        &tok,
        &recs,
        &mut NoEdit,
        Protocol::Batch,
        &opts,
        &out,
    )
    .unwrap();
    let resumed = out.records().unwrap();
    assert_eq!(
        resumed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4"]
    );
    assert_eq!(resumed, whole);
}

#[test]
fn fine_tuning_under_the_single_protocol_restores_the_weights_bit_for_bit() {
    use ftedit::edit::augment::Fact;
    use ftedit::edit::ft::FtEditor;
    let (mut m, tok, _) = tiny();
    let before: Vec<tch::Tensor> = m.params.iter().map(|(_, t)| t.copy()).collect();
    let recipe = common::recipe(
        "layers",
        &[
            "train.layers=1..1",
            "augment.prefix_lengths=[[2, 3]]",
            "optim.min_steps=3",
        ],
    );
    let pool = ["the ten is in", "a hat is on", "the tea is"]
        .map(|p| Fact {
            prompt: p.into(),
            target: "the sea".into(),
        })
        .to_vec();
    let mut ft = FtEditor::new("ft", recipe, pool, None, &tok).unwrap();
    let recs: Vec<EditRecord> = (0..3).map(|i| record(&i.to_string())).collect();
    let out = OutputDir::open(temp_dir("proto-ft-single"), None).unwrap();
    let opts = no_generation();
    protocols::run(&mut m, &tok, &recs, &mut ft, Protocol::Single, &opts, &out).unwrap();
    assert_eq!(ft.reports.len(), 3, "one training run per record");
    for r in &ft.reports {
        assert_eq!(r.examples, [1, 2, 3]);
        assert!(
            r.trained_params
                .iter()
                .all(|n| n.starts_with("model.layers.1.mlp."))
        );
    }
    for ((name, t), b) in m.params.iter().zip(&before) {
        assert!(t.equal(b), "{name} was not restored exactly");
        assert!(!t.requires_grad(), "{name} left trainable");
    }
}

#[test]
fn every_method_changes_only_what_it_says_it_writes_and_the_single_protocol_restores_it() {
    use ftedit::edit::MethodConfig;
    let (mut m, tok, dir) = tiny();
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "the hat is in the tea and the tet is on the het. ".repeat(40),
    )
    .unwrap();
    let stats = [
        format!("stats.text={}", text.display()),
        format!("stats.cache_dir={}", dir.join("cache").display()),
        "stats.samples=300".into(),
        "value.steps=5".into(),
    ];
    let down = |l: usize| format!("model.layers.{l}.mlp.down_proj.weight");
    let mlp =
        |l: usize| ["gate", "up", "down"].map(|p| format!("model.layers.{l}.mlp.{p}_proj.weight"));
    let cases: [(&str, Vec<String>, Vec<String>); 4] = [
        ("rome", vec!["layer=1".into()], vec![down(1)]),
        ("memit", vec!["layers=1..2".into()], vec![down(1), down(2)]),
        (
            "alphaedit",
            vec!["layers=1..2".into(), "nullspace_threshold=1e9".into()],
            vec![down(1), down(2)],
        ),
        (
            "layers",
            vec![
                "train.layers=1..1".into(),
                "optim.min_steps=3".into(),
                "augment.prefixes=false".into(),
            ],
            mlp(1).to_vec(),
        ),
    ];
    let recs: Vec<EditRecord> = (0..2).map(|i| record(&i.to_string())).collect();
    let before: Vec<(String, tch::Tensor)> = m
        .params
        .iter()
        .map(|(n, t)| (n.to_owned(), t.copy()))
        .collect();
    for (method, sets, writes) in cases {
        let sets: Vec<String> = if method == "layers" {
            sets
        } else {
            stats.iter().cloned().chain(sets).collect()
        };
        let config = MethodConfig::load(method, None, &sets).unwrap();
        let mut editor = ftedit::edit::build(&config, &tok, &Default::default()).unwrap();
        let mut said = editor
            .writes(&m)
            .unwrap()
            .expect("the parameters it writes");
        said.sort();
        let mut expected = writes.clone();
        expected.sort();
        assert_eq!(said, expected, "{method}");
        // One edit: what changed is among what it said, and something did.
        editor.edit(&mut m, &tok, &recs[..1]).unwrap();
        let changed: Vec<&str> = m
            .params
            .iter()
            .zip(&before)
            .filter(|((_, t), (_, b))| !t.equal(b))
            .map(|((n, _), _)| n)
            .collect();
        assert!(!changed.is_empty(), "{method} changed nothing");
        assert!(
            changed.iter().all(|n| said.iter().any(|s| s == n)),
            "{method} changed {changed:?}"
        );
        // Back to the unedited model.
        for ((_, t), (_, b)) in m.params.iter().zip(&before) {
            let _g = tch::no_grad_guard();
            t.shallow_clone().copy_(b);
        }
        let put_back = m.params.snapshot_of(&said).unwrap();
        // The single protocol copies only those and restores the model bit for bit.
        let out = OutputDir::open(temp_dir(&format!("proto-writes-{method}")), None).unwrap();
        let opts = no_generation();
        protocols::run(
            &mut m,
            &tok,
            &recs,
            editor.as_mut(),
            Protocol::Single,
            &opts,
            &out,
        )
        .unwrap();
        for ((name, t), (_, b)) in m.params.iter().zip(&before) {
            assert!(t.equal(b), "{method}: {name} was not restored exactly");
        }
        assert_eq!(out.records().unwrap().len(), 2);
        // A partial snapshot puts back its own parameters and leaves the others alone.
        let other = down(0);
        {
            let _g = tch::no_grad_guard();
            for n in [&said[0], &other] {
                let _ = m.params.get(n).unwrap().g_add_scalar_(1.0);
            }
        }
        m.params.restore(&put_back).unwrap();
        let get = |n: &str| m.params.get(n).unwrap();
        let orig = |n: &str| {
            before
                .iter()
                .find(|(b, _)| b == n)
                .unwrap()
                .1
                .shallow_clone()
        };
        assert!(get(&said[0]).equal(&orig(&said[0])));
        assert!(!get(&other).equal(&orig(&other)));
        {
            let _g = tch::no_grad_guard();
            get(&other).copy_(&orig(&other));
        }
    }
    assert!(
        m.params
            .snapshot_of(&["no.such.weight".to_string()])
            .is_err()
    );
}

/// A health probe on the tiny model: 48 tokens of plain text, two facts.
fn health_probe(tok: &Tokenizer, m: &Model, tokens: usize) -> ftedit::Result<Probe> {
    let dir = temp_dir("health-files");
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "the sea is in the city and the tea is on the hat\n".repeat(10),
    )
    .unwrap();
    let facts = dir.join("facts.json");
    let known = serde_json::json!([
        {"subject": "Ann", "prompt": "Ann works in", "attribute": "the sea"},
        {"subject": "Bob", "prompt": "Bob works in", "attribute": "the city"},
    ]);
    std::fs::write(&facts, known.to_string()).unwrap();
    let options = HealthOptions {
        text,
        tokens,
        window: 16,
        known: Some(facts),
        known_n: 10,
        collapse_factor: 1.5,
        cache_dir: None,
        general: None,
    };
    Probe::new(tok, options, m.max_positions())
}

fn curve(out: &OutputDir) -> Vec<protocols::sequential::CurvePoint> {
    protocols::sequential::read_curve(&out.path).unwrap()
}

#[test]
fn a_sequential_run_writes_its_curve_and_a_killed_one_keeps_it() {
    let (mut m, tok, _) = tiny();
    let recs: Vec<EditRecord> = (0..6).map(|i| record(&i.to_string())).collect();
    let opts = EvalOptions {
        health: Some(health_probe(&tok, &m, 48).unwrap()),
        // Every third record: 0 and 3.
        curve_sample: 2,
        ..scores_only()
    };
    let seq = Protocol::Sequential {
        batch_size: 2,
        eval_every: Some(1),
    };
    let snapshot = m.params.snapshot();
    let out = OutputDir::open(temp_dir("seq-curve"), None).unwrap();
    let outcome = protocols::run(&mut m, &tok, &recs, &mut Scramble, seq, &opts, &out).unwrap();
    m.params.restore(&snapshot).unwrap();
    let points = curve(&out);
    // Before the first edit, after steps 1 and 2, and the final evaluation.
    let edits: Vec<usize> = points.iter().map(|p| p.edits).collect();
    assert_eq!(edits, [0, 2, 4, 6]);
    // Scored: the sample's edited records (then all), and always the first batch.
    let evaluated: Vec<usize> = points.iter().map(|p| p.evaluated).collect();
    assert_eq!(evaluated, [0, 1, 2, 6]);
    assert!(points[0].metrics.is_empty());
    assert!(points.iter().all(|p| p.first_batch["ES"].is_some()));
    assert!(points[1..].iter().all(|p| p.metrics["ES"].is_some()));
    // The health of each point; scrambled weights collapse the model at the first edit.
    let h: Vec<_> = points.iter().map(|p| p.health.clone().unwrap()).collect();
    assert_eq!(h[0].ratio(), 1.0);
    assert!(!h[0].collapsed);
    assert!(
        h[1..]
            .iter()
            .all(|h| h.collapsed && h.collapsed_at == Some(2)),
        "{h:?}"
    );
    assert!(points.windows(2).all(|w| w[0].seconds <= w[1].seconds));
    assert_eq!(outcome.health.as_ref(), Some(&h[3]));
    // The summary carries the health numbers.
    let file = out
        .write_summary(None, Some(outcome.timing), outcome.health)
        .unwrap();
    assert_eq!(file.summary.metrics["PPL"], Some(h[3].ppl));
    assert!(
        file.summary
            .notes
            .iter()
            .any(|n| n.contains("after 2 edits"))
    );

    // Killed in the third step: the curve keeps the points before it.
    let out = OutputDir::open(temp_dir("seq-curve-killed"), None).unwrap();
    let mut logger = Logger {
        edited: vec![],
        fail_at: Some("4"),
    };
    assert!(protocols::run(&mut m, &tok, &recs, &mut logger, seq, &opts, &out).is_err());
    assert_eq!(
        curve(&out).iter().map(|p| p.edits).collect::<Vec<_>>(),
        [0, 2, 4]
    );
}

#[test]
fn bad_sequential_settings_and_short_texts_fail_before_any_edit() {
    let (mut m, tok, _) = tiny();
    assert!(Protocol::parse("sequential", 0, None).is_err());
    assert!(Protocol::parse("sequential", 2, Some(0)).is_err());
    let recs: Vec<EditRecord> = (0..6).map(|i| record(&i.to_string())).collect();
    let opts = scores_only();
    let mut logger = Logger {
        edited: vec![],
        fail_at: None,
    };
    let out = OutputDir::open(temp_dir("seq-bad"), None).unwrap();
    let seq = Protocol::parse("sequential", 2, Some(4)).unwrap();
    let e = protocols::run(&mut m, &tok, &recs, &mut logger, seq, &opts, &out).unwrap_err();
    assert!(
        e.to_string()
            .contains("--eval-every 4 is more than the run's 3 steps"),
        "{e}"
    );
    assert!(logger.edited.is_empty());
    let e = health_probe(&tok, &m, 100_000).err().unwrap();
    assert!(e.to_string().contains("fewer than the 100000"), "{e}");
}

#[test]
fn the_health_check_compares_the_edited_model_with_the_unedited_one() {
    let (mut m, tok, _) = tiny();
    let recs: Vec<EditRecord> = (0..2).map(|i| record(&i.to_string())).collect();
    let opts = EvalOptions {
        health: Some(health_probe(&tok, &m, 48).unwrap()),
        ..scores_only()
    };
    let run = |m: &mut Model, editor: &mut dyn Editor, dir: &str| {
        let out = OutputDir::open(temp_dir(dir), None).unwrap();
        protocols::run(m, &tok, &recs, editor, Protocol::Batch, &opts, &out).unwrap()
    };
    let h = run(&mut m, &mut NoEdit, "health-none").health.unwrap();
    assert!(h.ppl > 1.0 && h.ratio() == 1.0 && !h.collapsed);
    let h = run(&mut m, &mut Scramble, "health-scramble")
        .health
        .unwrap();
    assert!(
        h.ratio() > 1.5 && h.collapsed && h.collapsed_at == Some(2),
        "{h:?}"
    );
    // The single protocol undoes its edits: nothing to measure.
    let out = OutputDir::open(temp_dir("health-single"), None).unwrap();
    let single = protocols::run(
        &mut m,
        &tok,
        &recs,
        &mut Scramble,
        Protocol::Single,
        &opts,
        &out,
    );
    assert!(single.unwrap().health.is_none());
}

#[test]
fn max_steps_caps_the_training_budget() {
    use ftedit::edit::ft::FtEditor;
    let (mut m, tok, _) = tiny();
    let recs: Vec<EditRecord> = (0..3).map(|i| record(&i.to_string())).collect();
    for (sets, steps) in [
        (vec!["optim.min_steps=7"], 7),
        (vec!["optim.min_steps=7", "optim.max_steps=2"], 2),
    ] {
        let mut all = vec![
            "train.layers=1..1",
            "augment.prefixes=false",
            "augment.facts=none",
            "optim.stop_loss=0",
        ];
        all.extend(sets);
        let mut ft =
            FtEditor::new("ft", common::recipe("layers", &all), vec![], None, &tok).unwrap();
        ft.edit(&mut m, &tok, &recs).unwrap();
        assert_eq!(ft.reports[0].steps, steps, "{all:?}");
    }
}

/// An editor with state: each batch adds 0.01 to one weight and counts its batches
/// (its state, which a resumed run must get back); it fails at one id.
struct Stepper {
    batches: i64,
    fail_at: Option<&'static str>,
    edited: Vec<String>,
}

impl Editor for Stepper {
    fn name(&self) -> &str {
        "stepper"
    }
    fn edit(
        &mut self,
        model: &mut Model,
        _: &Tokenizer,
        records: &[EditRecord],
    ) -> ftedit::Result<()> {
        if records.iter().any(|r| Some(r.id.as_str()) == self.fail_at) {
            return Err(ftedit::Error::Input("stopped".into()));
        }
        let _g = tch::no_grad_guard();
        let w = model.params.get("model.layers.1.mlp.down_proj.weight")?;
        let _ = w
            .shallow_clone()
            .g_add_scalar_(0.01 * (self.batches + 1) as f64);
        self.batches += 1;
        self.edited.extend(records.iter().map(|r| r.id.clone()));
        Ok(())
    }
    fn report(&self) -> Option<serde_json::Value> {
        let runs: Vec<_> = self
            .edited
            .iter()
            .map(|id| serde_json::json!({ "id": id }))
            .collect();
        Some(serde_json::json!({ "method": "stepper", "runs": runs }))
    }
    fn state(&self) -> ftedit::edit::EditorState {
        ftedit::edit::EditorState {
            tensors: vec![("batches".into(), tch::Tensor::from(self.batches))],
            values: serde_json::json!({ "edited": self.edited.len() }),
        }
    }
    fn set_state(&mut self, state: ftedit::edit::EditorState) -> ftedit::Result<()> {
        self.batches = state.tensors[0].1.int64_value(&[]);
        // The JSON part comes back too.
        assert_eq!(state.values["edited"], 2 * self.batches);
        Ok(())
    }
}

#[test]
fn a_killed_sequential_run_resumes_from_its_last_checkpoint() {
    let recs: Vec<EditRecord> = (0..6).map(|i| record(&i.to_string())).collect();
    let opts = scores_only();
    let seq = Protocol::parse("sequential", 2, Some(1)).unwrap();
    let stepper = |fail_at| Stepper {
        batches: 0,
        fail_at,
        edited: vec![],
    };
    // Each run loads the same model file, as a new process would.
    let (_, _, dir) = tiny();
    let load = || ftedit::load(dir.join("tiny.gguf"), &ftedit::LoadOptions::default()).unwrap();
    // Uninterrupted.
    let (mut m, tok) = load();
    let whole = OutputDir::open(temp_dir("seq-whole"), None).unwrap();
    protocols::run(&mut m, &tok, &recs, &mut stepper(None), seq, &opts, &whole).unwrap();
    let want: Vec<tch::Tensor> = m.params.iter().map(|(_, t)| t.copy()).collect();
    // Killed in the third step, then resumed by a fresh process: a newly loaded model
    // and editor.
    let (mut m, tok) = load();
    let out = OutputDir::open(temp_dir("seq-resume"), None).unwrap();
    let mut first = stepper(Some("4"));
    assert!(protocols::run(&mut m, &tok, &recs, &mut first, seq, &opts, &out).is_err());
    let (mut m, tok) = load();
    let mut second = stepper(None);
    protocols::run(&mut m, &tok, &recs, &mut second, seq, &opts, &out).unwrap();
    assert_eq!(
        second.edited,
        ["4", "5"],
        "only the last step is edited again"
    );
    assert_eq!(second.batches, 3, "the editor's state came back");
    for ((name, t), w) in m.params.iter().zip(&want) {
        assert!(t.equal(w), "{name} differs from the uninterrupted run");
    }
    assert_eq!(
        curve(&out).iter().map(|p| p.edits).collect::<Vec<_>>(),
        [0, 2, 4, 6]
    );
    assert_eq!(out.records().unwrap(), whole.records().unwrap());
    assert_eq!(reported_ids(&out), ["0", "1", "2", "3", "4", "5"]);
    // A checkpoint of other records is refused.
    let (mut m, tok) = load();
    let e = protocols::run(
        &mut m,
        &tok,
        &recs[..4],
        &mut stepper(None),
        seq,
        &opts,
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("checkpoint of another run"), "{e}");
}

#[test]
fn the_subject_span_is_the_subjects_tokens_in_the_rewrite_prompt() {
    let (_, tok) = common::load("smollm2");
    let rec = |prompt: &str, subject: &str| EditRecord {
        prompt: prompt.into(),
        subject: subject.into(),
        ..record("x")
    };
    let r = rec("The {} is located in", "Eiffel Tower");
    let span = r.subject_span(&tok).unwrap().unwrap();
    let head = tok.encode("The", true).unwrap();
    assert_eq!(span.start, head.len());
    assert_eq!(&span.ids[..span.start], &head[..]);
    assert_eq!(
        tok.decode(&span.ids[span.start..]).trim(),
        "Eiffel Tower",
        "{:?}",
        span.ids
    );
    // The prompt's full tokens begin with the span.
    let full = tok.encode(&r.rewrite_prompt(), true).unwrap();
    assert!(full.starts_with(&span.ids));
    // No slot (a prompt without the subject): no span.
    assert_eq!(
        rec("no slot", "Eiffel Tower").subject_span(&tok).unwrap(),
        None
    );
}

#[test]
fn knowedit_files_load_with_their_probe_sets() {
    // EasyEdit's KnowEdit WikiData_counterfact, detected from its fields.
    let path = data("counterfact/knowedit/wiki_counterfact_train_cf.json");
    let ke = data::load(&path, None).unwrap();
    assert_eq!(ke.len(), 1427);
    assert_eq!(data::load(&path, Some(Format::KnowEdit)).unwrap(), ke);
    let r = &ke[0];
    assert_eq!((r.id.as_str(), r.suite), ("0", Suite::Zsre));
    // The subject is written verbatim in the prompt: it becomes the slot.
    assert_eq!(
        r.prompt,
        "The name of the country which {} is associated with is"
    );
    assert_eq!(r.subject, "Goursez Vreizh");
    assert_eq!(
        (r.target_new.as_str(), r.target_true.as_deref()),
        ("Franche-Comté", Some("France"))
    );
    let sets: Vec<(&str, &str)> = r
        .portability
        .iter()
        .map(|p| (p.set.as_str(), p.target.as_str()))
        .collect();
    assert_eq!(
        sets,
        [
            ("Reasoning", "Besançon"),
            ("Subject_Aliasing", "Franche-Comté")
        ]
    );
    assert_eq!(
        r.neighborhood[0].prompt,
        "The name of the founder of Goursez Vreizh is"
    );
    // Every probe of the file is kept (1.55 portability probes per record).
    let probes: usize = ke.iter().map(|r| r.portability.len()).sum();
    assert_eq!(probes, 2216);
    // Record 629 has an empty ground truth: the old fact is unknown, not an error.
    assert!(ke.iter().any(|r| r.target_true.is_none()));

    // The list forms of other KnowEdit files: ground truths as lists, paired prompt and
    // answer lists, nested answer lists; a rephrase prompt.
    let dir = temp_dir("knowedit");
    let file = dir.join("recent.json");
    std::fs::write(
        &file,
        r#"[{"subject": "Ann", "prompt": "Ann lives in", "target_new": "Oslo",
             "ground_truth": ["Rome", "Roma"], "rephrase_prompt": "The home of Ann is",
             "portability": {"Reasoning": {"prompt": ["Ann's country is", "Ann's sea is"],
                                           "ground_truth": [["Norway", "NO"], "the North Sea"]}},
             "locality": {"Forgetfulness": [{"prompt": "Bob lives in", "ground_truth": "Paris"}]}}]"#,
    )
    .unwrap();
    let r = &data::load(&file, None).unwrap()[0];
    assert_eq!(r.target_true.as_deref(), Some("Rome"));
    assert_eq!(r.paraphrases, ["The home of Ann is"]);
    let got: Vec<(&str, &str)> = r
        .portability
        .iter()
        .map(|p| (p.prompt.as_str(), p.target.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("Ann's country is", "Norway"),
            ("Ann's sea is", "the North Sea")
        ]
    );
    assert_eq!(r.neighborhood[0].target, "Paris");
    // Unpaired lists are named.
    std::fs::write(
        &file,
        r#"[{"subject": "Ann", "prompt": "Ann lives in", "target_new": "Oslo", "ground_truth": "Rome",
             "portability": {"Reasoning": {"prompt": ["a", "b"], "ground_truth": ["c"]}}}]"#,
    )
    .unwrap();
    let err = data::load(&file, None).unwrap_err().to_string();
    assert!(
        err.contains("portability/Reasoning/0/ground_truth") && err.contains("2 prompts but 1"),
        "{err}"
    );
}

#[test]
fn portability_is_the_token_accuracy_of_each_probe_set() {
    let (model, tok) = common::load("smollm2");
    let base = EditRecord {
        suite: Suite::Zsre,
        prompt: "The Eiffel Tower is located in the city of".replace("The Eiffel Tower", "{}"),
        subject: "The Eiffel Tower".into(),
        target_new: "Paris".into(),
        target_true: None,
        ..record("p")
    };
    // A probe that is the rewrite itself scores as efficacy does; one the model cannot
    // know scores lower; the two sets are reported apart.
    let mut r = base.clone();
    r.portability = vec![
        data::Probe {
            set: "Same".into(),
            prompt: base.rewrite_prompt(),
            target: "Paris".into(),
        },
        data::Probe {
            set: "Other".into(),
            prompt: "The Eiffel Tower is located in the city of".into(),
            target: "Zanzibar Qwerty".into(),
        },
    ];
    let s = &ftedit::eval::zsre::score(&model, &tok, &[&r]).unwrap()[0];
    let portability = ftedit::eval::easyedit::portability(&model, &tok, &[&r])
        .unwrap()
        .remove(0);
    assert_eq!(portability.get("Same").copied(), s.efficacy);
    assert!(s.efficacy == Some(1.0), "{:?}", s.efficacy);
    assert!(portability["Other"] < 0.5, "{portability:?}");
    let other = portability["Other"] * 100.0;
    let summary = ftedit::eval::Summary::new(&[ftedit::eval::RecordResult {
        id: "p".into(),
        suite: Suite::Zsre,
        subject: r.subject.clone(),
        prompt: r.rewrite_prompt(),
        target_new: r.target_new.clone(),
        target_true: None,
        scores: Scores::Zsre(s.clone()),
        exact: None,
        generation: None,
        subject_nll: None,
        subject_nll_before: None,
        chat: None,
        portability,
        locality: None,
    }]);
    let m = &summary.metrics;
    assert_eq!(m["portability.Same"], Some(100.0));
    assert_eq!(m["portability.Other"], Some(other));
    assert_eq!(m["portability"], Some((100.0 + other) / 2.0));
    // Portability is scored on records of any suite (EasyEdit's CounterFact release).
    let cf = EditRecord {
        portability: r.portability.clone(),
        ..record("cf")
    };
    let p = ftedit::eval::easyedit::portability(&model, &tok, &[&cf]).unwrap();
    assert_eq!(p[0]["Same"], 1.0);
}

#[test]
fn locality_compares_the_neighbours_predictions_before_and_after_the_edit() {
    let (mut m, tok, _) = tiny();
    let recs: Vec<EditRecord> = (0..3)
        .map(|i| {
            let mut r = record(&i.to_string());
            r.neighborhood.push(data::Neighbor {
                prompt: "Carl lives in".into(),
                // The answer is not what is compared: the predictions are.
                target: "a place nobody knows".into(),
                set: Some("Forgetfulness".into()),
            });
            r
        })
        .collect();
    let opts = scores_only();
    let summary = |editor: &mut dyn Editor, dir: &str, m: &mut Model| {
        let out = OutputDir::open(temp_dir(dir), None).unwrap();
        protocols::run(m, &tok, &recs, editor, Protocol::Batch, &opts, &out).unwrap();
        let records = out.records().unwrap();
        let l = records[0].locality.as_ref().unwrap();
        assert_eq!(l.neighbours.len(), 2);
        assert_eq!(l.neighbours[0].set, "neighborhood");
        assert_eq!(l.neighbours[0].before.len(), l.neighbours[0].after.len());
        ftedit::eval::Summary::new(&records).metrics
    };
    // Nothing edited: every prediction is kept, whatever the answers are.
    let kept = summary(&mut NoEdit, "locality-none", &mut m);
    assert_eq!(kept["locality"], Some(100.0));
    assert_eq!(kept["locality.neighborhood"], Some(100.0));
    assert_eq!(kept["locality.Forgetfulness"], Some(100.0));
    // A scrambled model changes most of them.
    let snapshot = m.params.snapshot();
    let scrambled = summary(&mut Scramble, "locality-scramble", &mut m);
    m.params.restore(&snapshot).unwrap();
    assert!(scrambled["locality"].unwrap() < 50.0, "{scrambled:?}");
    let sets = [
        scrambled["locality.neighborhood"].unwrap(),
        scrambled["locality.Forgetfulness"].unwrap(),
    ];
    assert!(
        (scrambled["locality"].unwrap() - (sets[0] + sets[1]) / 2.0).abs() < 1e-9,
        "the mean of the sets"
    );
}

#[test]
fn easyedit_portability_and_wikibigedit_fields_load() {
    // zsRE dev: every record carries a one-hop question answered through the edit.
    let zs = data::load(data("zsre/zsre_eval_dev.json"), None).unwrap();
    assert!(zs.iter().all(|r| r.portability.len() == 1));
    let p = &zs[0].portability[0];
    assert_eq!(p.set, "one_hop");
    assert!(
        p.prompt
            .starts_with("What type of sports event is the IAAF")
    );
    assert_eq!(p.target, "Athletics");

    // EasyEdit's other portability fields, in a CounterFact (EasyEdit reduced) record.
    let dir = temp_dir("easyedit-portability");
    let file = dir.join("cf.json");
    std::fs::write(
        &file,
        r#"[{"case_id": 7, "prompt": "Ann lives in", "subject": "Ann", "target_new": "Oslo",
             "ground_truth": "Rome", "rephrase_prompt": "The home of Ann is",
             "locality_prompt": "Bob lives in", "locality_ground_truth": "Paris",
             "alternative_subject": ["Annie"],
             "alter_subject_question": "Where does Annie live?",
             "inverse question": "Who lives in Oslo?"}]"#,
    )
    .unwrap();
    let r = &data::load(&file, None).unwrap()[0];
    assert_eq!(r.suite, Suite::CounterFact);
    let got: Vec<(&str, &str, &str)> = r
        .portability
        .iter()
        .map(|p| (p.set.as_str(), p.prompt.as_str(), p.target.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("subject_replace", "Annie lives in", "Oslo"),
            ("subject_replace", "Where does Annie live?", "Oslo"),
            ("inverse_relation", "Who lives in Oslo?", "Ann"),
        ]
    );

    // WikiBigEdit-style: question prompts naming the subject, lists of rephrasings and
    // locality probes, personas, a portability object; no ground truth (zsRE-like).
    let file = dir.join("wikibig.json");
    std::fs::write(
        &file,
        r#"[{"prompt": "Who is the head coach of Ann FC?", "subject": "Ann FC",
             "target_new": "Bo Li", "rephrase_prompt": ["Ann FC's coach is who?"],
             "locality_prompt": ["Who wrote Hamlet?", "What is 2+2?"],
             "locality_ground_truth": ["Shakespeare", "4"],
             "personas": {"child": "who coaches Ann FC??"},
             "portability": {"multi_hop": {"prompt": "Where was Ann FC's coach born?",
                                           "ground_truth": "Wuhan"}}}]"#,
    )
    .unwrap();
    let r = &data::load(&file, None).unwrap()[0];
    assert_eq!(r.suite, Suite::Zsre);
    assert_eq!(r.prompt, "Who is the head coach of {}?");
    assert_eq!(r.paraphrases, ["Ann FC's coach is who?"]);
    let n: Vec<(&str, &str)> = r
        .neighborhood
        .iter()
        .map(|n| (n.prompt.as_str(), n.target.as_str()))
        .collect();
    assert_eq!(
        n,
        [("Who wrote Hamlet?", "Shakespeare"), ("What is 2+2?", "4")]
    );
    let sets: Vec<(&str, &str)> = r
        .portability
        .iter()
        .map(|p| (p.set.as_str(), p.target.as_str()))
        .collect();
    assert_eq!(sets, [("multi_hop", "Wuhan"), ("personas", "Bo Li")]);
    // Unpaired locality lists are named.
    std::fs::write(
        &file,
        r#"[{"prompt": "Who coaches {}?", "subject": "Ann FC", "target_new": "Bo Li",
             "locality_prompt": ["a", "b"], "locality_ground_truth": "c"}]"#,
    )
    .unwrap();
    let err = data::load(&file, None).unwrap_err().to_string();
    assert!(
        err.contains("locality_ground_truth") && err.contains("2 locality prompts but 1"),
        "{err}"
    );
}

/// Any editor, failing at one record id as a run killed mid-way would stop.
struct FailAt {
    inner: Box<dyn Editor>,
    fail_at: Option<&'static str>,
    edited: Vec<String>,
}

impl Editor for FailAt {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn writes(&self, model: &Model) -> ftedit::Result<Option<Vec<String>>> {
        self.inner.writes(model)
    }
    fn begin(&mut self, model: &Model, tok: &Tokenizer) -> ftedit::Result<()> {
        self.inner.begin(model, tok)
    }
    fn edit(
        &mut self,
        model: &mut Model,
        tok: &Tokenizer,
        records: &[EditRecord],
    ) -> ftedit::Result<()> {
        if records.iter().any(|r| Some(r.id.as_str()) == self.fail_at) {
            return Err(ftedit::Error::Input("stopped".into()));
        }
        self.edited.extend(records.iter().map(|r| r.id.clone()));
        self.inner.edit(model, tok, records)
    }
    fn report(&self) -> Option<serde_json::Value> {
        self.inner.report()
    }
    fn state(&self) -> ftedit::edit::EditorState {
        self.inner.state()
    }
    fn set_state(&mut self, state: ftedit::edit::EditorState) -> ftedit::Result<()> {
        self.inner.set_state(state)
    }
}

/// GRACE, WISE and SERAC keep their edits in an adapter beside the weights: a sequential
/// run killed in its third step and resumed by a fresh process (model and editor loaded
/// anew) ends with the uninterrupted run's adapter, tensor for tensor, and its records.
#[test]
fn editors_beside_the_weights_resume_a_killed_sequential_run_exactly() {
    use ftedit::edit::MethodConfig;
    let (_, _, dir) = tiny();
    let load = || ftedit::load(dir.join("tiny.gguf"), &ftedit::LoadOptions::default()).unwrap();
    let names = ["Ann", "Bob", "Cat", "Dan", "Eve", "Fay"];
    let recs: Vec<EditRecord> = names
        .iter()
        .enumerate()
        .map(|(i, s)| EditRecord {
            subject: (*s).into(),
            target_new: ["the city", "a tea", "the hat"][i % 3].into(),
            ..record(&i.to_string())
        })
        .collect();
    // SERAC's classifier: layer 1's embedding, standardised by nothing, projected by
    // the identity.
    let (m, _) = load();
    let classifier = ftedit::edit::serac::Classifier {
        layer: 1,
        mean: tch::Tensor::zeros([32], (Kind::Float, m.device())),
        std: tch::Tensor::ones([32], (Kind::Float, m.device())),
        proj: tch::Tensor::eye(32, (Kind::Float, m.device())),
        model_id: m.fingerprint(&[]).unwrap(),
    };
    let cpath = dir.join("classifier.safetensors");
    classifier.save(&cpath).unwrap();
    let pool = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/facts.jsonl");
    let cases: [(&str, Vec<String>); 3] = [
        ("grace", vec!["layer=1".into(), "iterations=20".into()]),
        ("wise", vec!["layer=1".into(), "iterations=10".into()]),
        (
            "serac",
            vec![
                format!("classifier={}", cpath.display()),
                "layer=1".into(),
                "threshold=0.1".into(),
            ],
        ),
    ];
    let seq = Protocol::parse("sequential", 2, Some(1)).unwrap();
    let opts = scores_only();
    for (method, sets) in cases {
        let config = MethodConfig::load(method, None, &sets).unwrap();
        let build = |fail_at| FailAt {
            inner: ftedit::edit::build(
                &config,
                &load().1,
                &ftedit::edit::registry::BuildOptions {
                    pool: Some(pool.clone()),
                    ..Default::default()
                },
            )
            .unwrap(),
            fail_at,
            edited: Vec::new(),
        };
        let adapter = |m: &Model| {
            let saved = m.adapter().expect("an adapter").saved();
            (saved.config.to_string(), saved.tensors)
        };
        let (mut m, tok) = load();
        let whole = OutputDir::open(temp_dir(&format!("seq-whole-{method}")), None).unwrap();
        protocols::run(&mut m, &tok, &recs, &mut build(None), seq, &opts, &whole).unwrap();
        let (want_config, want) = adapter(&m);
        let (mut m, tok) = load();
        let out = OutputDir::open(temp_dir(&format!("seq-resume-{method}")), None).unwrap();
        assert!(
            protocols::run(&mut m, &tok, &recs, &mut build(Some("4")), seq, &opts, &out).is_err()
        );
        let (mut m, tok) = load();
        let mut resumed = build(None);
        protocols::run(&mut m, &tok, &recs, &mut resumed, seq, &opts, &out).unwrap();
        assert_eq!(
            resumed.edited,
            ["4", "5"],
            "{method}: only the last step again"
        );
        let (got_config, got) = adapter(&m);
        assert_eq!(got_config, want_config, "{method}");
        assert_eq!(got.len(), want.len());
        for ((n, t), (_, w)) in got.iter().zip(&want) {
            assert!(
                t.equal(w),
                "{method}: {n} differs from the uninterrupted run"
            );
        }
        assert_eq!(out.records().unwrap(), whole.records().unwrap(), "{method}");
        assert_eq!(
            curve(&out).iter().map(|p| p.edits).collect::<Vec<_>>(),
            [0, 2, 4, 6]
        );
    }
}
