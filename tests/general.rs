//! General abilities: the task files read as lm-eval builds its requests (the examples
//! and counts of `../shared/data/general/LM_EVAL.md`), and the scores on a tiny random
//! model against the definitions, computed here from one plain forward pass per
//! request.

mod common;

use common::{random_model, temp_dir, tiny_llama, write_gguf};
use ftedit::eval::general::{self, Doc, Metric, Task, encode_pair, tasks};
use tch::Kind;

fn general_dir() -> std::path::PathBuf {
    common::shared_dir().join("data/general")
}

#[test]
fn the_task_files_read_as_lm_eval_reads_them() {
    let dir = general_dir();
    let counts = [
        ("arc_easy", 2376),
        ("arc_challenge", 1172),
        ("hellaswag", 2000),
        ("piqa", 1838),
        ("winogrande", 1267),
        ("boolq", 3270),
        ("mmlu", 2013),
        ("lambada", 5153),
    ];
    for (name, n) in counts {
        let t = tasks::load(name, &dir, None).unwrap();
        assert_eq!(t.docs.len(), n, "{name}");
        assert!(t.docs.iter().all(|d| d.gold < d.requests.len()), "{name}");
    }
    let arc = &tasks::load("arc_easy", &dir, Some(1)).unwrap().docs[0];
    assert_eq!(arc.gold, 0);
    assert_eq!(
        arc.requests[0].1,
        " Sunlight is the source of energy for nearly all ecosystems."
    );
    assert!(arc.requests[0].0.starts_with("Question: Which statement"));
    assert!(arc.requests[0].0.ends_with("food webs?\nAnswer:"));
    assert_eq!(arc.choice_chars, [59, 54, 50, 43]);

    let hs = &tasks::load("hellaswag", &dir, Some(2)).unwrap().docs;
    assert_eq!(
        hs[0].requests[3],
        (
            "Roof shingle removal: A man is sitting on a roof. He".to_string(),
            " starts pulling up roofing on a roof.".to_string()
        )
    );
    assert_eq!(hs[0].gold, 3);
    assert!(hs[1].requests[0].0.ends_with("grabs the pole. The lady"));

    let piqa = &tasks::load("piqa", &dir, Some(2)).unwrap().docs[1];
    assert_eq!(piqa.choice_chars[0], 30, "{:?}", piqa.requests[0]);

    let lam = &tasks::load("lambada", &dir, Some(1)).unwrap().docs[0];
    assert!(lam.requests[0].0.ends_with("I don't care about"));
    assert_eq!(lam.requests[0].1, " signs");

    // A sample of MMLU takes ⌈N / 12⌉ items of each of the 12 subjects, in name order.
    let sample = tasks::load("mmlu", &dir, Some(13)).unwrap().docs;
    assert_eq!(sample.len(), 24);
    let about = |d: &ftedit::eval::general::Doc| {
        let c = &d.requests[0].0;
        c[c.find("about ").unwrap()..c.find(".\n\n").unwrap()].to_string()
    };
    assert_eq!(about(&sample[1]), "about abstract algebra");
    assert_eq!(about(&sample[2]), "about college computer science");
    assert_eq!(about(&sample[23]), "about world religions");
    let mmlu = &tasks::load("mmlu", &dir, Some(1)).unwrap().docs[0];
    assert!(mmlu.requests[0].0.starts_with(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    ));
    assert!(
        mmlu.requests[0]
            .0
            .ends_with("over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    );
    assert_eq!((mmlu.gold, mmlu.requests[1].1.as_str()), (1, " B"));

    let wino = &tasks::load("winogrande", &dir, Some(1)).unwrap().docs[0];
    assert_eq!(
        wino.requests[1],
        (
            "Sarah was a much better surgeon than Maria so Maria".to_string(),
            " always got the easier cases.".to_string()
        )
    );
    assert_eq!(wino.gold, 1);

    let boolq = &tasks::load("boolq", &dir, Some(1)).unwrap().docs[0];
    assert!(boolq.requests[0].0.starts_with("Ethanol fuel -- "));
    assert!(boolq.requests[0].0.ends_with("?\nAnswer:"));
    assert_eq!(
        (boolq.requests[0].1.as_str(), boolq.requests[1].1.as_str()),
        (" no", " yes")
    );

    let err = tasks::load("squad", &dir, None).unwrap_err().to_string();
    assert!(err.contains("unknown task 'squad'"), "{err}");
}

/// The tiny model and its tokenizer (from a GGUF file).
fn tiny() -> (ftedit::Model, ftedit::Tokenizer) {
    let dir = temp_dir("general");
    let path = dir.join("tiny.gguf");
    write_gguf(&random_model(tiny_llama(false), Kind::Float), &path, 2048);
    ftedit::load(&path, &Default::default()).unwrap()
}

/// Σ log p(continuation token) from one forward pass over context + continuation, and
/// whether each was the argmax: the definition.
fn by_definition(m: &ftedit::Model, ctx: &[u32], cont: &[u32]) -> (f64, bool) {
    let ids: Vec<i64> = ctx.iter().chain(cont).map(|&t| t as i64).collect();
    let input = ftedit::model::Input::right_padded(
        &[ids.iter().map(|&t| t as u32).collect::<Vec<_>>()],
        m.device(),
    )
    .unwrap();
    let logits = m.forward(&input, &ftedit::model::LogitsAt::All).unwrap();
    let logp = logits
        .get(0)
        .to_kind(Kind::Double)
        .log_softmax(-1, Kind::Double);
    let (mut ll, mut greedy) = (0.0, true);
    for (j, &t) in cont.iter().enumerate() {
        let row = logp.get((ctx.len() + j - 1) as i64);
        ll += row.double_value(&[t as i64]);
        greedy &= row.argmax(0, false).int64_value(&[]) == t as i64;
    }
    (ll, greedy)
}

#[test]
fn scores_follow_the_definitions() {
    let (model, tok) = tiny();
    // Trailing whitespace moves to the continuation; its tokens are the joint tail.
    let (ctx, cont) = encode_pair(&tok, "the cat ", "sat").unwrap();
    let whole = tok.encode("the cat sat", true).unwrap();
    assert_eq!([ctx.clone(), cont.clone()].concat(), whole);
    assert_eq!(ctx, tok.encode("the cat", true).unwrap());

    let docs = vec![
        Doc {
            requests: vec![
                ("the hat is".into(), " on".into()),
                ("the hat is".into(), " in the tea".into()),
                ("the hat is".into(), " at".into()),
            ],
            gold: 1,
            choice_chars: vec![2, 10, 2],
        },
        Doc {
            requests: vec![
                ("so the ten".into(), " is in".into()),
                ("so the tea".into(), " is in".into()),
            ],
            gold: 0,
            choice_chars: vec![5, 5],
        },
    ];
    let toy = Task {
        name: "toy".into(),
        docs: docs.clone(),
        main: Metric::AccNorm,
        norm: true,
        greedy: false,
    };
    let prepared = general::PreparedTask::new(&tok, &toy, usize::MAX).unwrap();
    let lls = general::loglikelihoods(&model, &prepared.docs).unwrap();
    let (mut acc, mut acc_norm) = (0.0, 0.0);
    for (d, got) in docs.iter().zip(&lls) {
        let mut want = Vec::new();
        for ((c, x), g) in d.requests.iter().zip(got) {
            let (ctx, cont) = encode_pair(&tok, c, x).unwrap();
            let w = by_definition(&model, &ctx, &cont);
            assert!((w.0 - g.0).abs() < 1e-4, "{c}{x}: {} vs {}", w.0, g.0);
            assert_eq!(w.1, g.1);
            want.push(w.0);
        }
        // argmax, lowest index on ties, exactly as np.argmax.
        let first_max = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        acc += f64::from(u8::from(first_max(&want) == d.gold));
        let normed: Vec<f64> = want
            .iter()
            .zip(&d.choice_chars)
            .map(|(l, &n)| l / n as f64)
            .collect();
        acc_norm += f64::from(u8::from(first_max(&normed) == d.gold));
    }
    let s = general::score(&model, &tok, &toy).unwrap();
    assert_eq!(s.acc, 100.0 * acc / 2.0);
    assert_eq!(s.acc_norm, Some(100.0 * acc_norm / 2.0));
    assert_eq!(s.main, s.acc_norm.unwrap());

    // LAMBADA-style: acc = every token greedy; perplexity = exp(−mean ll).
    let lam = Task {
        name: "toy-lambada".into(),
        docs: vec![docs[0].clone(), docs[1].clone()]
            .into_iter()
            .map(|mut d| {
                d.requests.truncate(1);
                d.gold = 0;
                d
            })
            .collect(),
        main: Metric::Acc,
        norm: false,
        greedy: true,
    };
    let s = general::score(&model, &tok, &lam).unwrap();
    let (mut lls, mut hits) = (0.0, 0.0);
    for d in &lam.docs {
        let (c, x) = &d.requests[0];
        let (ctx, cont) = encode_pair(&tok, c, x).unwrap();
        let (ll, g) = by_definition(&model, &ctx, &cont);
        lls += ll;
        hits += f64::from(u8::from(g));
    }
    assert_eq!(s.acc, 100.0 * hits / 2.0);
    let ppl = (-lls / 2.0).exp();
    // Compared as mean log-likelihoods: this random model's ~29 nats per document carry
    // f32 rounding of ~1e-6 that batching changes (AVX-512 kernels block batched and
    // single rows differently: 1.5e-6 seen on a Xeon), which exp() turns into the same
    // relative error of a ~6e12 perplexity.
    let got = s.perplexity.unwrap();
    assert!(
        (got.ln() - ppl.ln()).abs() < 1e-5,
        "perplexity {got} vs {ppl}"
    );
}

/// `eval --general N` scores the tasks before and after editing into the summary's
/// health, and a drop over `--general-drop` flags a collapse.
#[test]
fn eval_reports_general_abilities_and_their_drop_can_flag_a_collapse() {
    let dir = temp_dir("general-eval");
    let path = dir.join("tiny.gguf");
    write_gguf(&random_model(tiny_llama(false), Kind::Float), &path, 2048);
    let data = common::counterfact_jsonl(&dir, 2);
    let run = |out: &str, extra: &[&str]| -> serde_json::Value {
        let o = std::process::Command::new(common::ftedit_bin())
            .args(["eval", "--model"])
            .arg(&path)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(dir.join(out))
            .args(["--method", "ft-m", "--set", "optim.epochs=2", "--quiet"])
            .args([
                "--general",
                "3",
                "--general-tasks",
                "arc_easy,boolq,lambada",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(&std::fs::read_to_string(dir.join(out).join("summary.json")).unwrap())
            .unwrap()
    };
    let s = run("plain", &[]);
    let g = &s["health"]["general"];
    for task in ["arc_easy", "boolq", "lambada"] {
        assert_eq!(g["tasks"][task]["n"], 3, "{g}");
        assert!(g["tasks"][task]["acc"].is_number(), "{g}");
        assert!(g["before"][task]["main"].is_number(), "{g}");
    }
    assert!(g["tasks"]["lambada"]["perplexity"].is_number(), "{g}");
    let mean = |side: &str| {
        ["arc_easy", "boolq", "lambada"]
            .iter()
            .map(|t| g[side][*t]["main"].as_f64().unwrap())
            .sum::<f64>()
            / 3.0
    };
    assert!((g["mean"].as_f64().unwrap() - mean("tasks")).abs() < 1e-9);
    let drop = g["mean_drop"].as_f64().unwrap();
    assert!((drop - (mean("before") - mean("tasks"))).abs() < 1e-9);
    // The summary's metrics carry them too, with the unedited values beside.
    let m = &s["metrics"];
    assert_eq!(m["general.mean_drop"], g["mean_drop"]);
    assert_eq!(
        m["general.arc_easy.acc_norm_before"],
        g["before"]["arc_easy"]["acc_norm"]
    );
    assert_eq!(m["general.lambada.acc"], g["tasks"]["lambada"]["acc"]);
    assert_eq!(
        m["general.lambada.perplexity_before"],
        g["before"]["lambada"]["perplexity"]
    );
    assert!(m.get("general.arc_easy.perplexity").is_none());
    assert!(m.get("general.boolq.acc_norm").is_none());
    // A threshold below the drop flags the run.
    let s = run("flagged", &[&format!("--general-drop={}", drop - 1.0)]);
    assert_eq!(s["health"]["collapsed"], true, "{}", s["health"]);
}

/// Without `--general`, `eval` scores the default sample (10 items per task); where the
/// data folder has no `general/`, it leaves them out with a note and runs the rest.
#[test]
fn eval_scores_a_default_sample_and_goes_on_without_the_tasks_folder() {
    let dir = temp_dir("general-default");
    let path = dir.join("tiny.gguf");
    write_gguf(&random_model(tiny_llama(false), Kind::Float), &path, 2048);
    let data = common::counterfact_jsonl(&dir, 2);
    let bare = dir.join("data");
    std::fs::create_dir_all(bare.join("aux")).unwrap();
    let wikitext = general_dir().join("../aux/wikitext-2");
    std::os::unix::fs::symlink(
        wikitext.canonicalize().unwrap(),
        bare.join("aux/wikitext-2"),
    )
    .unwrap();
    let run = |out: &str, data_dir: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(common::ftedit_bin());
        c.args(["eval", "--model"])
            .arg(&path)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(dir.join(out))
            .args(["--method", "none", "--general-tasks", "arc_easy", "--quiet"]);
        if let Some(d) = data_dir {
            c.env("FTEDIT_DATA", d);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(out).join("summary.json")).unwrap(),
        )
        .unwrap();
        (s, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (s, _) = run("default", None);
    let items = ftedit::eval::health::GeneralOptions::default().items;
    assert_eq!(items, 10);
    assert_eq!(
        s["health"]["general"]["tasks"]["arc_easy"]["n"], items,
        "{}",
        s["health"]
    );
    let (s, err) = run("bare", Some(&bare));
    assert!(err.contains("no general abilities"), "{err}");
    assert!(s["health"]["PPL"].is_number(), "{}", s["health"]);
    assert!(s["health"].get("general").is_none(), "{}", s["health"]);
}

/// `ftedit health` checks a model file alone and against another: against itself
/// nothing drops and nothing is flagged.
#[test]
fn the_health_command_checks_a_model_against_another() {
    let dir = temp_dir("general-health");
    let path = dir.join("tiny.gguf");
    write_gguf(&random_model(tiny_llama(false), Kind::Float), &path, 2048);
    let run = |extra: &[&str]| -> serde_json::Value {
        let o = std::process::Command::new(common::ftedit_bin())
            .args(["health", "--model"])
            .arg(&path)
            .args([
                "--general",
                "2",
                "--general-tasks",
                "arc_easy,lambada",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let alone = run(&[]);
    assert!(alone["PPL"].as_f64().unwrap() > 1.0, "{alone}");
    assert_eq!(alone["general"]["tasks"]["arc_easy"]["n"], 2);
    let against = run(&["--against", path.to_str().unwrap()]);
    assert_eq!(against["general"]["mean_drop"], 0.0);
    assert_eq!(against["collapsed"], false);
    assert_eq!(against["PPL"], against["PPL_before"]);
}

/// AlphaEdit's GLUE-style prompts (LM_EVAL.md §3, from `glue_eval/<task>_eval.py`) on
/// the first scored record (index 10) of each file.
#[test]
fn glue_prompts_are_alphaedits() {
    use general::glue;
    let dir = general_dir().join("alphaedit_glue_eval");
    let record = |file: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        serde_json::from_str(text.lines().nth(10).unwrap()).unwrap()
    };
    let r = record("sst2.jsonl");
    let s = r["sentence"].as_str().unwrap();
    assert_eq!(
        glue::prompt("glue_sst2", &r).unwrap(),
        (format!("Review :{s}\nSentiment :"), 1)
    );
    let r = record("cola.jsonl");
    assert_eq!(
        glue::prompt("glue_cola", &r).unwrap().0,
        "Is this sentence linguistically acceptable?\nSentence: That is the reason why he resigned.\nAnswer: "
    );
    let r = record("rte.jsonl");
    let (p, label) = glue::prompt("glue_rte", &r).unwrap();
    assert!(p.starts_with("The latest attacks targeted the U-S embassy"));
    assert!(
        p.ends_with("Uzbekistan's capital. True or False?\nanswer:"),
        "{p}"
    );
    // GLUE's 1 (not entailed) is kept: AlphaEdit scores it as "True".
    assert_eq!(label, 1);
    let r = record("nli.jsonl");
    let (p, label) = glue::prompt("glue_nli", &r).unwrap();
    assert!(p.contains(" entails the ") && p.ends_with(" True or False? Answer:"));
    assert_eq!(label, i64::from(r["label"] == "entailment"));
    let r = record("mmlu.jsonl");
    let (p, label) = glue::prompt("glue_mmlu", &r).unwrap();
    assert!(p.ends_with("\n(A) orthographic\n(B) phonemic\n(C) semantic\n(D) perceptual\nAnswer:"));
    assert_eq!(label, 2);
    let r = record("mrpc.jsonl");
    assert!(glue::prompt("glue_mrpc", &r).unwrap().0.starts_with(
        "Are the sentences paraphrases of each other.\nSentence 1: \" The idea that Tony Abbott"
    ));
}

/// The probability answers of a GLUE-style task against the definition: `exp(−mean
/// NLL)` of `" " + word`'s own tokens read after the prompt's, from one plain forward
/// pass over prompt + " " + word; F1 weighted by gold class as sklearn's.
#[test]
fn glue_scores_follow_alphaedits_definitions() {
    use general::{GeneralTask, glue};
    let (model, tok) = tiny();
    let dir = general_dir();
    for (name, file, words) in [
        ("glue_sst2", "sst2.jsonl", vec!["positive", "negative"]),
        ("glue_mmlu", "mmlu.jsonl", vec!["A", "B", "C", "D"]),
    ] {
        let n = 6;
        let task = GeneralTask::load(name, &dir, n, &tok, 2048).unwrap();
        let s = task.score(&model).unwrap();
        assert_eq!(s.n, n);
        let text = std::fs::read_to_string(dir.join("alphaedit_glue_eval").join(file)).unwrap();
        let (mut labels, mut preds) = (Vec::new(), Vec::new());
        for line in text.lines().skip(10).take(n) {
            let (prompt, label) = glue::prompt(name, &serde_json::from_str(line).unwrap()).unwrap();
            let ctx = tok.encode(&prompt, true).unwrap();
            let p: Vec<f64> = words
                .iter()
                .map(|w| {
                    let own = tok.encode(&format!(" {w}"), false).unwrap();
                    let joint = tok.encode(&format!("{prompt} {w}"), true).unwrap();
                    // One forward pass over the joint encoding; own[j] read at
                    // ctx.len() + j − 1, whatever token the joint encoding has there.
                    let input =
                        ftedit::model::Input::right_padded(&[joint], model.device()).unwrap();
                    let logp = model
                        .forward(&input, &ftedit::model::LogitsAt::All)
                        .unwrap()
                        .get(0)
                        .to_kind(Kind::Double)
                        .log_softmax(-1, Kind::Double);
                    let ll: f64 = own
                        .iter()
                        .enumerate()
                        .map(|(j, &t)| {
                            logp.get((ctx.len() + j - 1) as i64)
                                .double_value(&[t as i64])
                        })
                        .sum();
                    (ll / own.len() as f64).exp()
                })
                .collect();
            let pred = if words.len() == 2 {
                i64::from(p[0] > p[1])
            } else {
                (0..4)
                    .find(|&i| (0..4).all(|j| j == i || p[i] > p[j]))
                    .map_or(-1, |i| i as i64)
            };
            labels.push(label);
            preds.push(pred);
        }
        let GeneralTask::Glue(glue_task) = &task else {
            panic!("{name} is not a GLUE task")
        };
        let answers = glue_task.answers(&model).unwrap();
        assert_eq!(answers.labels, labels);
        assert_eq!(answers.probable, preds, "{name}");
        let want = 100.0 * glue::weighted_f1(&labels, &preds);
        assert!(
            (s.f1_new.unwrap() - want).abs() < 1e-9,
            "{name}: {:?} vs {want}",
            s.f1_new
        );
        let invalid = s.invalid.unwrap();
        assert!(invalid <= n && s.acc <= 100.0 * (n - invalid) as f64 / n as f64 + 1e-9);
        assert_eq!(s.main, s.f1.unwrap());
    }
}
