//! Properties every architecture must have, on tiny random models: shapes, causal
//! masking, padding invariance, KV-cache generation equal to recomputation, logits only
//! where asked, no autograd graph below the lowest trainable layer, working hooks, and
//! gradients that agree with finite differences.
//! Set FTEDIT_TEST_DEVICE=cuda to run them on a GPU.

mod common;

use common::{random_model, tiny_configs, tiny_gemma3, tiny_llama};
use ftedit::model::{
    CaptureKeys, ForwardExtras, GenerateOptions, Input, LogitsAt, Probe, Sampling, Site, generate,
};
use ftedit::train::{Example, Reduction, backward_in_slices, conditional_nll};
use tch::{Kind, Tensor};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().to_kind(Kind::Double).double_value(&[])
}

/// Logits `[1, T, V]` of one sequence run alone.
fn all_logits(m: &ftedit::Model, seq: &[u32]) -> Tensor {
    m.forward(
        &Input::right_padded(&[seq], m.device()).unwrap(),
        &LogitsAt::All,
    )
    .unwrap()
}

fn seqs() -> Vec<Vec<u32>> {
    vec![
        vec![3, 17, 42, 5, 9, 11, 60, 2, 8, 33],
        vec![7, 1, 19],
        vec![50, 4, 4, 4, 21, 13],
    ]
}

#[test]
fn logits_have_the_right_shapes_and_agree_across_selections() {
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Float);
        let s = seqs();
        let input = Input::right_padded(&s, m.device()).unwrap();
        let all = m.forward(&input, &LogitsAt::All).unwrap();
        assert_eq!(all.size(), [3, 10, 260], "{}", cfg.name());
        let last = m.forward(&input, &LogitsAt::Last).unwrap();
        assert_eq!(last.size(), [3, 260]);
        for (r, seq) in s.iter().enumerate() {
            let want = all.get(r as i64).get(seq.len() as i64 - 1);
            assert!(
                max_diff(&last.get(r as i64), &want) < 1e-5,
                "{}",
                cfg.name()
            );
        }
        let at = vec![(0, 0), (1, 2), (2, 5), (0, 9)];
        let sel = m.forward(&input, &LogitsAt::Positions(at.clone())).unwrap();
        assert_eq!(sel.size(), [4, 260]);
        for (i, (r, p)) in at.iter().enumerate() {
            let want = all.get(*r as i64).get(*p as i64);
            assert!(max_diff(&sel.get(i as i64), &want) < 1e-5, "{}", cfg.name());
        }
        assert!(
            m.forward(&input, &LogitsAt::Positions(vec![(3, 0)]))
                .is_err()
        );
    }
}

#[test]
fn attention_is_causal() {
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Float);
        let a = vec![3u32, 17, 42, 5, 9, 11, 60, 2];
        let mut b = a.clone();
        b[5] = 30;
        b[7] = 1;
        let la = all_logits(&m, &a);
        let lb = all_logits(&m, &b);
        let before = max_diff(&la.narrow(1, 0, 5), &lb.narrow(1, 0, 5));
        let after = max_diff(&la.narrow(1, 5, 3), &lb.narrow(1, 5, 3));
        assert!(
            before < 1e-6,
            "{}: the past changed by {before}",
            cfg.name()
        );
        assert!(
            after > 1e-3,
            "{}: the changed tokens had no effect",
            cfg.name()
        );
    }
}

#[test]
fn a_padded_batch_gives_the_logits_of_each_row_alone() {
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Float);
        let s = seqs();
        let batch = m
            .forward(
                &Input::right_padded(&s, m.device()).unwrap(),
                &LogitsAt::All,
            )
            .unwrap();
        for (r, seq) in s.iter().enumerate() {
            let alone = all_logits(&m, seq);
            let n = seq.len() as i64;
            let d = max_diff(&batch.get(r as i64).narrow(0, 0, n), &alone.get(0));
            assert!(d < 1e-5, "{}: row {r} differs by {d}", cfg.name());
        }
    }
}

#[test]
fn sliding_window_limits_what_local_layers_see() {
    // Only local layers with a window of 3: after any number of layers, a token can
    // influence at most (window - 1) * layers positions ahead of it.
    let m = random_model(tiny_gemma3(3, true), Kind::Float);
    let a: Vec<u32> = (0..20).map(|i| (i * 7 % 64) as u32).collect();
    let mut b = a.clone();
    b[0] = 63;
    let la = all_logits(&m, &a);
    let lb = all_logits(&m, &b);
    let reach: i64 = 2 * 6; // (window - 1) × layers
    assert!(max_diff(&la.narrow(1, 0, 1), &lb.narrow(1, 0, 1)) > 1e-3);
    let beyond = max_diff(
        &la.narrow(1, reach + 1, 20 - reach - 1),
        &lb.narrow(1, reach + 1, 20 - reach - 1),
    );
    assert!(beyond < 1e-6, "a token leaked past the window: {beyond}");
}

/// Greedy decoding without a cache: the whole sequence is run again at every step.
fn recompute_greedy(m: &ftedit::Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let logits = m
            .forward(
                &Input::right_padded(&[&seq], m.device()).unwrap(),
                &LogitsAt::Last,
            )
            .unwrap();
        seq.push(logits.argmax(-1, false).int64_value(&[0]) as u32);
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn kv_cache_generation_equals_recomputation() {
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Double);
        let prompts = seqs();
        let opts = GenerateOptions {
            max_new_tokens: 12,
            ..GenerateOptions::default()
        };
        // One at a time, and as one left-padded batch.
        let batched = generate(&m, &prompts, &opts).unwrap();
        for (p, got) in prompts.iter().zip(&batched) {
            let alone = generate(&m, std::slice::from_ref(p), &opts)
                .unwrap()
                .remove(0);
            let want = recompute_greedy(&m, p, 12);
            assert_eq!(alone, want, "{}: cached vs recomputed", cfg.name());
            assert_eq!(got, &want, "{}: batched vs recomputed", cfg.name());
        }
    }
}

#[test]
fn sampling_is_reproducible_from_a_seed() {
    let m = random_model(tiny_llama(false), Kind::Float);
    let prompt = vec![vec![3u32, 17, 42]];
    let opts = |seed| GenerateOptions {
        max_new_tokens: 16,
        sampling: Sampling::TopK {
            k: 5,
            temperature: 1.0,
        },
        seed,
        row_seeds: None,
        stop: vec![],
    };
    let a = generate(&m, &prompt, &opts(1)).unwrap();
    assert_eq!(a, generate(&m, &prompt, &opts(1)).unwrap());
    assert_ne!(a, generate(&m, &prompt, &opts(2)).unwrap());
    // Every sampled token is among the 5 most probable at its step.
    let mut seq = prompt[0].clone();
    for &tok in &a[0] {
        let logits = m
            .forward(
                &Input::right_padded(&[&seq], m.device()).unwrap(),
                &LogitsAt::Last,
            )
            .unwrap();
        let top5 = Vec::<i64>::try_from(logits.get(0).topk(5, -1, true, true).1).unwrap();
        assert!(top5.contains(&(tok as i64)));
        seq.push(tok);
    }
}

#[test]
fn no_autograd_graph_below_the_lowest_trainable_layer() {
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Float);
        let name = m.mlp_out_proj(1);
        m.params.set_trainable(&name, true).unwrap();
        assert_eq!(m.grad_from(), 2, "{}", cfg.name());
        let input = Input::right_padded(&seqs(), m.device()).unwrap();
        let mut hooks = CaptureKeys {
            layers: vec![0, 1, 2.min(m.num_layers() - 1)],
            keys: vec![],
        };
        let extras = ForwardExtras {
            hooks: Some(&mut hooks),
            cache: None,
            grad_from: None,
            ..Default::default()
        };
        let logits = m.forward_with(&input, &LogitsAt::Last, extras).unwrap();
        assert!(logits.requires_grad());
        // Layers 0 and 1 run before anything trainable: their MLP keys carry no graph.
        for (layer, key) in &hooks.keys {
            if *layer <= 1 {
                assert!(
                    !key.requires_grad(),
                    "{}: layer {layer} built a graph",
                    cfg.name()
                );
            } else {
                assert!(
                    key.requires_grad(),
                    "{}: layer {layer} lost the graph",
                    cfg.name()
                );
            }
        }
        logits.sum(Kind::Float).backward();
        assert!(m.params.get(&name).unwrap().grad().defined());
        assert!(!m.params.get(&m.mlp_out_proj(0)).unwrap().grad().defined());
        // Freezing everything means no graph at all.
        m.params.freeze_all();
        assert_eq!(m.grad_from(), m.num_layers() + 1);
        assert!(!m.forward(&input, &LogitsAt::Last).unwrap().requires_grad());
    }
}

/// Observes every layer but declares layer 0 its last.
struct SeenLayers(Vec<usize>);

impl ftedit::model::LayerHooks for SeenLayers {
    fn wants(&self, _layer: usize) -> bool {
        true
    }
    fn mlp_key(&mut self, layer: usize, _key: &Tensor) {
        self.0.push(layer);
    }
    fn last_layer(&self) -> Option<usize> {
        Some(0)
    }
}

#[test]
fn a_pass_for_hooks_stops_at_their_last_layer() {
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Float);
        let input = Input::right_padded(&seqs(), m.device()).unwrap();
        let mut seen = SeenLayers(Vec::new());
        m.run_hooks(&input, &mut seen).unwrap();
        assert_eq!(seen.0, [0], "{}", cfg.name());
        // Logits need every layer.
        let mut seen = SeenLayers(Vec::new());
        let extras = ForwardExtras {
            hooks: Some(&mut seen),
            stop_after: Some(0),
            ..Default::default()
        };
        assert!(m.forward_with(&input, &LogitsAt::Last, extras).is_err());
    }
}

#[test]
fn hooks_read_keys_and_add_to_the_mlp_output() {
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Float);
        let s = seqs();
        let input = Input::right_padded(&s, m.device()).unwrap();
        let base = m.forward(&input, &LogitsAt::All).unwrap();

        let mut capture = CaptureKeys {
            layers: vec![1],
            keys: vec![],
        };
        let extras = ForwardExtras {
            hooks: Some(&mut capture),
            cache: None,
            grad_from: None,
            ..Default::default()
        };
        let _ = m.forward_with(&input, &LogitsAt::All, extras).unwrap();
        assert_eq!(capture.keys.len(), 1);
        let key = &capture.keys[0].1;
        // A pass for the hooks alone stops at layer 1 and sees the same keys.
        let mut early = CaptureKeys {
            layers: vec![1],
            keys: vec![],
        };
        m.run_hooks(&input, &mut early).unwrap();
        assert_eq!(
            max_diff(&early.keys[0].1, key),
            0.0,
            "{}: run_hooks",
            cfg.name()
        );
        let out_proj = m.params.get(&m.mlp_out_proj(1)).unwrap();
        assert_eq!(key.size()[..2], [3, 10]);
        assert!(
            out_proj.size().contains(&key.size()[2]),
            "{}: key width",
            cfg.name()
        );

        // Add a vector at row 0, position 4: rows 1-2 and positions 0-3 are unchanged.
        let d = m.params.get(&m.mlp_out_proj(1)).unwrap().size();
        let hidden = if cfg.name() == "gpt2" { d[1] } else { d[0] };
        let mut add = Probe {
            layer: 1,
            site: Site::MlpOutput,
            positions: vec![4],
            // Not a constant vector: LayerNorm would remove a constant offset (GPT-2).
            delta: Some(Tensor::arange(hidden, (Kind::Float, m.device())) / hidden as f64),
            seen: None,
        };
        let extras = ForwardExtras {
            hooks: Some(&mut add),
            cache: None,
            grad_from: None,
            ..Default::default()
        };
        let edited = m.forward_with(&input, &LogitsAt::All, extras).unwrap();
        let n = cfg.name();
        assert!(
            max_diff(&edited.narrow(0, 1, 2), &base.narrow(0, 1, 2)) < 1e-6,
            "{n}: other rows"
        );
        assert!(
            max_diff(&edited.get(0).narrow(0, 0, 4), &base.get(0).narrow(0, 0, 4)) < 1e-6,
            "{n}: the past"
        );
        let changed = max_diff(&edited.get(0).narrow(0, 4, 6), &base.get(0).narrow(0, 4, 6));
        assert!(
            changed > 1e-3,
            "{n}: the edit changed the output by only {changed}"
        );
    }
}

#[test]
fn conditional_loss_gradient_matches_finite_differences() {
    // Double precision so central differences are accurate to ~1e-8.
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Double);
        let name = m.mlp_out_proj(1);
        m.params.set_trainable(&name, true).unwrap();
        let batch = vec![
            Example {
                prompt: vec![3, 17, 42, 5],
                target: vec![9, 11],
            },
            Example {
                prompt: vec![7, 1],
                target: vec![19, 20, 21],
            },
        ];
        let loss = conditional_nll(&m, &batch, Reduction::TokenMean).unwrap();
        loss.backward();
        let w = m.params.get(&name).unwrap();
        let grad = w.grad().copy();
        let _g = tch::no_grad_guard();
        let h = 1e-6;
        for idx in [[0i64, 0], [1, 2], [5, 7]] {
            let mut e = w.get(idx[0]).get(idx[1]);
            let orig = e.double_value(&[]);
            let _ = e.fill_(orig + h);
            let plus = conditional_nll(&m, &batch, Reduction::TokenMean)
                .unwrap()
                .double_value(&[]);
            let _ = e.fill_(orig - h);
            let minus = conditional_nll(&m, &batch, Reduction::TokenMean)
                .unwrap()
                .double_value(&[]);
            let _ = e.fill_(orig);
            let fd = (plus - minus) / (2.0 * h);
            let an = grad.double_value(&idx);
            assert!(
                (fd - an).abs() < 1e-6 + 1e-5 * an.abs(),
                "{} {idx:?}: analytic {an}, finite difference {fd}",
                cfg.name()
            );
        }
    }
}

#[test]
fn conditional_loss_ignores_prompt_tokens_that_equal_target_tokens() {
    // Masking is by position: a prompt token equal to a target token is not trained on,
    // so the loss equals the mean over the target positions alone.
    let m = random_model(tiny_llama(false), Kind::Double);
    let batch = vec![Example {
        prompt: vec![9, 9, 9, 4],
        target: vec![9, 5],
    }];
    let loss = conditional_nll(&m, &batch, Reduction::TokenMean)
        .unwrap()
        .double_value(&[]);
    let input = Input::right_padded(&[vec![9u32, 9, 9, 4, 9, 5]], m.device()).unwrap();
    let lp = m
        .forward(&input, &LogitsAt::All)
        .unwrap()
        .log_softmax(-1, Kind::Double);
    let want = -(lp.double_value(&[0, 3, 9]) + lp.double_value(&[0, 4, 5])) / 2.0;
    assert!((loss - want).abs() < 1e-10, "{loss} vs {want}");
}

#[test]
fn packed_sequences_give_the_logits_of_each_sequence_alone() {
    for cfg in tiny_configs() {
        let m = random_model(cfg.clone(), Kind::Float);
        let s = seqs();
        // All 10 + 6 + 3 tokens in one row, or in two rows of at most 10.
        let one = Input::packed(&s, m.device()).unwrap();
        let two = Input::packed_into(&s, 10, m.device()).unwrap();
        assert_eq!(
            (one.0.batch_size(), one.0.seq_len()),
            (1, 19),
            "{}",
            cfg.name()
        );
        assert_eq!(
            (two.0.batch_size(), two.0.seq_len()),
            (2, 10),
            "{}",
            cfg.name()
        );
        for (packed, place) in [one, two] {
            let all = m.forward(&packed, &LogitsAt::All).unwrap();
            for (seq, &(row, off)) in s.iter().zip(&place) {
                let alone = all_logits(&m, seq);
                let got = all.get(row as i64).narrow(0, off as i64, seq.len() as i64);
                let d = max_diff(&got, &alone.get(0));
                assert!(d < 1e-5, "{}: packed sequence differs by {d}", cfg.name());
            }
        }
    }
}

#[test]
fn f32_on_the_test_device_agrees_with_f64_on_the_cpu() {
    // On CPU this checks single against double precision; with FTEDIT_TEST_DEVICE=cuda
    // it checks the GPU against the CPU as well.
    for cfg in tiny_configs() {
        let reference =
            ftedit::Model::random(cfg.clone(), 11, 0.2, Kind::Double, tch::Device::Cpu).unwrap();
        let m = reference.to(common::test_device(), Kind::Float).unwrap();
        let s = seqs();
        let want = reference
            .forward(
                &Input::right_padded(&s, tch::Device::Cpu).unwrap(),
                &LogitsAt::All,
            )
            .unwrap();
        let got = m
            .forward(
                &Input::right_padded(&s, m.device()).unwrap(),
                &LogitsAt::All,
            )
            .unwrap();
        let d = max_diff(
            &got.to_device(tch::Device::Cpu).to_kind(Kind::Double),
            &want,
        );
        assert!(
            d < 1e-4,
            "{}: f32 on {:?} differs from f64 by {d}",
            cfg.name(),
            m.device()
        );
    }
}

#[test]
fn conditional_loss_gradient_comes_from_target_positions_only() {
    // The gradient of the conditional loss equals that of the mean NLL of the target
    // tokens read off a full forward pass: prompt positions (masked by position, here
    // repeating target tokens) contribute nothing.
    let m = random_model(tiny_llama(false), Kind::Double);
    let name = m.mlp_out_proj(1);
    m.params.set_trainable(&name, true).unwrap();
    let w = m.params.get(&name).unwrap();
    let ex = Example {
        prompt: vec![9, 5, 9, 4],
        target: vec![9, 5],
    };
    conditional_nll(&m, std::slice::from_ref(&ex), Reduction::TokenMean)
        .unwrap()
        .backward();
    let ours = w.grad().copy();
    let mut g = w.grad();
    let _ = g.zero_();
    let input = Input::right_padded(&[vec![9u32, 5, 9, 4, 9, 5]], m.device()).unwrap();
    let lp = m
        .forward(&input, &LogitsAt::All)
        .unwrap()
        .log_softmax(-1, Kind::Double);
    let manual = -(lp.get(0).get(3).get(9) + lp.get(0).get(4).get(5)) / 2.0;
    manual.backward();
    assert!(max_diff(&ours, &w.grad()) < 1e-12);
    assert!(ours.abs().max().double_value(&[]) > 1e-6, "a real gradient");
}

#[test]
fn prefilled_tails_give_the_logits_and_gradients_of_whole_sequences() {
    // Rows split at 4, 0 (no head) and 2; Gemma 3 with a window of 3 checks that
    // sliding-window masks still measure true distances across the cached heads.
    let mut cfgs = tiny_configs();
    cfgs.push(tiny_gemma3(3, true));
    for cfg in cfgs {
        let m = random_model(cfg.clone(), Kind::Double);
        let n = cfg.name();
        let s = seqs();
        let split = [4usize, 0, 2];
        let d = m.params.get(&m.mlp_out_proj(1)).unwrap().size();
        let hidden = if n == "gpt2" { d[1] } else { d[0] };
        let delta = (Tensor::arange(hidden, (Kind::Double, m.device())) / hidden as f64)
            .set_requires_grad(true);
        let probe = |positions: Vec<i64>| Probe {
            layer: 1,
            site: Site::MlpOutput,
            positions,
            delta: Some(delta.shallow_clone()),
            seen: None,
        };
        // Every tail position, in whole-sequence and in tail coordinates.
        let whole: Vec<(usize, usize)> = (0..s.len())
            .flat_map(|r| (split[r]..s[r].len()).map(move |p| (r, p)))
            .collect();
        let tail: Vec<(usize, usize)> = whole.iter().map(|&(r, p)| (r, p - split[r])).collect();

        let input = Input::right_padded(&s, m.device()).unwrap();
        let t = input.seq_len();
        let mut full_probe = probe((0..3).map(|r| (r * t + split[r]) as i64).collect());
        let extras = ForwardExtras {
            hooks: Some(&mut full_probe),
            cache: None,
            grad_from: Some(2),
            ..Default::default()
        };
        let want = m
            .forward_with(&input, &LogitsAt::Positions(whole), extras)
            .unwrap();
        let want_grad =
            Tensor::run_backward(&[want.square().sum(Kind::Double)], &[&delta], false, false);

        let mut batch = m.prefill(&s, &split).unwrap();
        let tt = batch.tails.seq_len();
        // From the tails' first layer, and from the probed layer (its input computed
        // once by start_at): the same logits and gradient either way.
        for start in [0, 1] {
            batch.start_at(&m, start).unwrap();
            let mut tail_probe = probe((0..3).map(|r| (r * tt) as i64).collect());
            let got = batch
                .forward(
                    &m,
                    &LogitsAt::Positions(tail.clone()),
                    Some(&mut tail_probe),
                    Some(2),
                )
                .unwrap();
            let got_grad =
                Tensor::run_backward(&[got.square().sum(Kind::Double)], &[&delta], false, false);
            assert!(
                max_diff(&got, &want) < 1e-9,
                "{n}, start {start}: logits {}",
                max_diff(&got, &want)
            );
            let g =
                max_diff(&got_grad[0], &want_grad[0]) / want_grad[0].abs().max().double_value(&[]);
            assert!(g < 1e-9, "{n}, start {start}: gradient {g}");
        }
        assert!(
            want_grad[0].abs().max().double_value(&[]) > 0.0,
            "{n}: no gradient"
        );
        batch.start_at(&m, 0).unwrap();
        // The cache is read-only: a second pass gives the same logits.
        let again = batch
            .forward(&m, &LogitsAt::Positions(tail), None, None)
            .unwrap();
        let plain = m
            .forward(
                &input,
                &LogitsAt::Positions(
                    (0..s.len())
                        .flat_map(|r| (split[r]..s[r].len()).map(move |p| (r, p)))
                        .collect(),
                ),
            )
            .unwrap();
        assert!(max_diff(&again, &plain) < 1e-9, "{n}: second pass");
        // Some rows, in another order, taken out of the batch (a value optimisation
        // dropping the records that stopped), its layer-1 input included: their logits.
        batch.start_at(&m, 1).unwrap();
        let rows = [2usize, 0];
        let mut picked = batch.select_rows(&rows).unwrap();
        let at = |tail: bool| -> Vec<(usize, usize)> {
            rows.iter()
                .enumerate()
                .flat_map(|(i, &r)| {
                    (split[r]..s[r].len())
                        .map(move |p| if tail { (i, p - split[r]) } else { (r, p) })
                })
                .collect()
        };
        let got = picked
            .forward(&m, &LogitsAt::Positions(at(true)), None, None)
            .unwrap();
        let want = m.forward(&input, &LogitsAt::Positions(at(false))).unwrap();
        assert!(max_diff(&got, &want) < 1e-9, "{n}: selected rows");
        assert!(batch.select_rows(&[3]).is_err());
    }
}

#[test]
fn prefill_rejects_a_row_without_a_tail() {
    let m = random_model(tiny_llama(false), Kind::Float);
    let err = m
        .prefill(&seqs(), &[4, 3, 2])
        .err()
        .expect("row 1 has no tail");
    assert!(err.to_string().contains("row 1"), "{err}");
}

#[test]
fn slices_give_the_whole_batch_loss_and_gradient() {
    // Slices of at most 8 tokens (the third example, 9 tokens, gets one of its own):
    // the summed value and accumulated gradient equal one pass over the whole batch.
    let m = random_model(tiny_llama(false), Kind::Double);
    let name = m.mlp_out_proj(1);
    m.params.set_trainable(&name, true).unwrap();
    let ex = |p: &[u32], t: &[u32]| Example {
        prompt: p.to_vec(),
        target: t.to_vec(),
    };
    let batch = vec![
        ex(&[3, 17, 42, 5], &[9, 11]),
        ex(&[7, 1], &[19, 20, 21]),
        ex(&[50, 4, 4, 4, 21, 13, 2], &[8, 33]),
        ex(&[60], &[2]),
    ];
    let w = m.params.get(&name).unwrap();
    let whole = conditional_nll(&m, &batch, Reduction::TokenMean).unwrap() * 0.7;
    whole.backward();
    let want = w.grad().copy();
    let _ = w.grad().zero_();
    let value = backward_in_slices(&m, &batch, 8, 0.7).unwrap();
    assert!(
        (value - whole.double_value(&[])).abs() < 1e-12,
        "loss {value}"
    );
    let diff = max_diff(&w.grad(), &want) / want.abs().max().double_value(&[]);
    assert!(diff < 1e-12, "gradient differs by {diff}");
}

/// bf16 mixed precision (issue 15): every architecture's logits stay within bf16's
/// rounding of the f32 ones, stay f32 themselves, and a training step under it leaves the
/// gradients of the f32 master weights f32 and close to the f32 step's (cosine > 0.99).
#[test]
fn bf16_mixed_precision_stays_close_to_f32_and_keeps_f32_master_weights() {
    use ftedit::model::Precision;
    for cfg in tiny_configs() {
        let m = random_model(cfg, Kind::Float);
        let input = Input::right_padded(&seqs(), m.device()).unwrap();
        let f32_logits = m.forward(&input, &LogitsAt::All).unwrap();
        assert_eq!(m.set_precision(Precision::Bf16Mixed), Precision::F32);
        let mixed = m.forward(&input, &LogitsAt::All).unwrap();
        assert_eq!(mixed.kind(), Kind::Float, "{}", m.arch_name());
        let d = max_diff(&mixed, &f32_logits);
        assert!(
            d > 0.0,
            "{}: bf16-mixed gave f32's logits exactly",
            m.arch_name()
        );
        // Relative to the largest logit (~4-5 here): bf16 keeps 8 mantissa bits (2^-8 ≈
        // 0.4 %) and the roundings of two layers add up to ~2 % of it, on AVX2 and on
        // AVX512-BF16 kernels alike (measured 1.7-1.9 % for Gemma 3 on each); a broken
        // bf16 path moves logits by their own size.
        let scale = f32_logits.abs().max().double_value(&[]);
        assert!(
            d < 0.05 * scale,
            "{}: logits moved by {d}, {:.1} % of the largest ({scale})",
            m.arch_name(),
            100.0 * d / scale
        );

        let batch = [Example {
            prompt: vec![3, 17, 42],
            target: vec![5, 9],
        }];
        let name = "model.layers.1.mlp.down_proj.weight";
        let name = if m.params.get(name).is_ok() {
            name.to_string()
        } else {
            m.params
                .iter()
                .map(|(n, _)| n.to_string())
                .find(|n| n.contains(".1.") && n.ends_with("weight") && n.contains("mlp"))
                .unwrap()
        };
        m.params.set_trainable(&name, true).unwrap();
        let w = m.params.get(&name).unwrap();
        let grad = |p: Precision| {
            m.set_precision(p);
            let _ = w.grad().defined().then(|| w.grad().zero_());
            conditional_nll(&m, &batch, Reduction::TokenMean)
                .unwrap()
                .backward();
            w.grad().copy()
        };
        let (g32, g16) = (grad(Precision::F32), grad(Precision::Bf16Mixed));
        assert_eq!(
            g16.kind(),
            Kind::Float,
            "{}: master gradient",
            m.arch_name()
        );
        let cos = (&g32 * &g16).sum(Kind::Double).double_value(&[])
            / (g32.norm().double_value(&[]) * g16.norm().double_value(&[]));
        assert!(cos > 0.99, "{}: gradient cosine {cos}", m.arch_name());
        m.set_precision(Precision::F32);
    }
}

/// Holding frozen layer weights in bf16 for a bf16-mixed training run (issue 39) computes
/// what autocast alone computes, bit for bit (the same bf16 roundings of the same
/// weights), and gives every weight back as the f32 tensor it was. A frozen vocabulary
/// projection is used in bf16 meanwhile: logits within bf16 rounding, and f32 again after.
#[test]
fn frozen_bf16_weights_compute_as_autocast_does_and_come_back_bit_for_bit() {
    use ftedit::model::Precision;
    for cfg in tiny_configs() {
        let m = random_model(cfg, Kind::Float);
        let name = m
            .params
            .iter()
            .map(|(n, _)| n.to_string())
            .find(|n| n.contains(".1.") && n.ends_with("weight") && n.contains("mlp"))
            .unwrap();
        m.params.set_trainable(&name, true).unwrap();
        let before: Vec<(String, Tensor)> = m
            .params
            .iter()
            .map(|(n, t)| (n.to_string(), t.detach().copy()))
            .collect();
        let batch = [Example {
            prompt: vec![3, 17, 42, 7],
            target: vec![5, 9],
        }];
        let w = m.params.get(&name).unwrap();
        let step = || {
            let _ = w.grad().defined().then(|| w.grad().zero_());
            let loss = conditional_nll(&m, &batch, Reduction::TokenMean).unwrap();
            loss.backward();
            (loss.double_value(&[]), w.grad().copy())
        };
        let input = Input::right_padded(&seqs(), m.device()).unwrap();
        m.set_precision(Precision::Bf16Mixed);
        let logits_a = m.forward(&input, &LogitsAt::All).unwrap();
        // A trained head stays f32: the layers alone are compared bit for bit. The head
        // is the matrix outside the layers with a row per vocabulary entry (an untied
        // `lm_head` / `embed_out` before a tied embedding).
        let vocab = logits_a.size()[2];
        let mut heads: Vec<String> = m
            .params
            .iter()
            .filter(|(n, t)| t.dim() == 2 && t.size()[0] == vocab && m.layer_of(n).is_none())
            .map(|(n, _)| n.to_string())
            .collect();
        heads.sort_by_key(|n| !(n.starts_with("lm_head.") || n == "embed_out.weight"));
        let head = heads[0].clone();
        m.params.set_trainable(&head, true).unwrap();
        let (loss_a, grad_a) = step();
        let (loss_b, grad_b) = {
            let _lowered = m.frozen_in_bf16();
            let lowered = m
                .params
                .iter()
                .filter(|(_, t)| t.kind() == Kind::BFloat16)
                .count();
            assert!(lowered > 0, "{}: nothing held in bf16", m.arch_name());
            assert_eq!(
                w.kind(),
                Kind::Float,
                "{}: the trained weight",
                m.arch_name()
            );
            step()
        };
        assert_eq!(loss_a, loss_b, "{}: loss", m.arch_name());
        assert_eq!(
            max_diff(&grad_a, &grad_b),
            0.0,
            "{}: gradient",
            m.arch_name()
        );
        // A frozen head: logits from its bf16 copy, within bf16 rounding.
        m.params.set_trainable(&head, false).unwrap();
        {
            let logits_b = {
                let _lowered = m.frozen_in_bf16();
                m.forward(&input, &LogitsAt::All).unwrap()
            };
            assert_eq!(logits_b.kind(), Kind::Float);
            let d = max_diff(&logits_a, &logits_b);
            let scale = logits_a.abs().max().double_value(&[]);
            assert!(d > 0.0, "{}: the head was not lowered", m.arch_name());
            assert!(d < 0.05 * scale, "{}: logits moved by {d}", m.arch_name());
            let again = m.forward(&input, &LogitsAt::All).unwrap();
            assert_eq!(max_diff(&again, &logits_a), 0.0, "{}: after", m.arch_name());
        }
        m.set_precision(Precision::F32);
        for (n, t) in &before {
            let now = m.params.get(n).unwrap();
            assert_eq!(now.kind(), t.kind(), "{}: {n}", m.arch_name());
            assert!(now.equal(t), "{}: {n} changed", m.arch_name());
        }
    }
}

/// Under CPU autocast, attention that a backward pass will run through computes in f32
/// (libtorch's bf16 flash-attention backward is several times slower on CPUs), while
/// attention without autograd keeps bf16.
#[test]
fn attention_under_cpu_autocast_trains_in_f32_and_infers_in_bf16() {
    use ftedit::model::nn::{AttnMask, attention};
    use ftedit::runtime::Autocast;
    tch::manual_seed(0);
    let q = Tensor::randn([2, 4, 5, 8], (Kind::Float, tch::Device::Cpu));
    let k = Tensor::randn([2, 2, 5, 8], (Kind::Float, tch::Device::Cpu));
    let v = Tensor::randn([2, 2, 5, 8], (Kind::Float, tch::Device::Cpu));
    let want = attention(&q, &k, &v, &AttnMask::Causal, 0.35);
    let _ac = Autocast::bf16(tch::Device::Cpu).unwrap();
    let inferred = attention(&q, &k, &v, &AttnMask::Causal, 0.35);
    assert_eq!(inferred.kind(), Kind::BFloat16);
    let qg = q.detach().set_requires_grad(true);
    let trained = attention(&qg, &k, &v, &AttnMask::Causal, 0.35);
    assert_eq!(trained.kind(), Kind::Float);
    assert!(max_diff(&trained, &want) < 1e-6);
    trained.sum(Kind::Float).backward();
    assert_eq!(qg.grad().kind(), Kind::Float);
}
