//! AdamW over the trainable parameters: libtorch's C++ AdamW (`torch::optim::AdamW`,
//! decoupled weight decay, bias correction, no AMSGrad) step for step, written here so
//! that its state (the moments and the step) can be saved and restored, which a training
//! run that survives a restart needs. tch does not expose the fused `alpha` / `value`
//! arguments libtorch's kernels round once, so results agree with libtorch's to float
//! rounding (1e-6 relative), not to the bit; a restored state goes on to the bit.

use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::ParamStore;

/// AdamW hyper-parameters (PyTorch's defaults, but no weight decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW on the parameters that were trainable when it was made.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Tensor>,
    /// First and second moments, one per parameter, created at the first step.
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Steps taken (parameters without a gradient at a step keep theirs, as in PyTorch,
    /// but every trainable parameter here gets one each step).
    steps: i64,
}

/// What an [`AdamW`] carries from step to step, for a resume point.
pub struct AdamWState {
    pub steps: i64,
    /// Per parameter, in the optimizer's order; empty before the first step.
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
}

impl AdamW {
    pub fn new(store: &ParamStore, cfg: AdamWConfig) -> Result<Self> {
        let params: Vec<Tensor> = store
            .trainable()
            .into_iter()
            .map(|(_, t)| t.shallow_clone())
            .collect();
        Self::over(params, cfg)
    }

    /// AdamW on tensors outside a parameter store (leaves that require grad, such as
    /// an adapter's values).
    pub fn over(params: Vec<Tensor>, cfg: AdamWConfig) -> Result<Self> {
        if params.is_empty() {
            return Err(Error::Input("no trainable parameters".into()));
        }
        Ok(AdamW {
            cfg,
            params,
            exp_avg: Vec::new(),
            exp_avg_sq: Vec::new(),
            steps: 0,
        })
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
        Ok(())
    }

    /// One step on the gradients the parameters hold.
    pub fn step(&mut self) -> Result<()> {
        let _g = tch::no_grad_guard();
        let c = self.cfg;
        if self.exp_avg.is_empty() {
            self.exp_avg = self.params.iter().map(Tensor::zeros_like).collect();
            self.exp_avg_sq = self.params.iter().map(Tensor::zeros_like).collect();
        }
        self.steps += 1;
        let bias1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - c.beta2.powi(self.steps as i32);
        let step_size = c.lr / bias1;
        for ((p, m), v) in self
            .params
            .iter()
            .zip(&mut self.exp_avg)
            .zip(&mut self.exp_avg_sq)
        {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let mut p = p.shallow_clone();
            if c.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
            }
            let _ = m.g_mul_scalar_(c.beta1).g_add_(&(&grad * (1.0 - c.beta1)));
            let _ = v
                .g_mul_scalar_(c.beta2)
                .addcmul_(&grad, &grad.g_mul_scalar(1.0 - c.beta2));
            let denom = (v.sqrt() / bias2.sqrt()).g_add_scalar_(c.eps);
            let _ = p.addcdiv_(&m.g_mul_scalar(-step_size), &denom);
        }
        Ok(())
    }

    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.cfg.lr = lr;
        Ok(())
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// A copy of the state, for a resume point.
    pub fn state(&self) -> AdamWState {
        AdamWState {
            steps: self.steps,
            exp_avg: self.exp_avg.iter().map(Tensor::copy).collect(),
            exp_avg_sq: self.exp_avg_sq.iter().map(Tensor::copy).collect(),
        }
    }

    /// Takes back a [`AdamW::state`] of an optimizer over parameters of the same shapes.
    pub fn set_state(&mut self, state: AdamWState) -> Result<()> {
        let fits = |ts: &[Tensor]| {
            ts.is_empty()
                || (ts.len() == self.params.len()
                    && ts
                        .iter()
                        .zip(&self.params)
                        .all(|(a, b)| a.size() == b.size()))
        };
        if !fits(&state.exp_avg) || !fits(&state.exp_avg_sq) {
            return Err(Error::Input(
                "optimizer state of other parameters (shapes differ)".into(),
            ));
        }
        let on = |ts: Vec<Tensor>| -> Vec<Tensor> {
            ts.into_iter()
                .zip(&self.params)
                .map(|(t, p)| t.to_device(p.device()).to_kind(p.kind()))
                .collect()
        };
        self.exp_avg = on(state.exp_avg);
        self.exp_avg_sq = on(state.exp_avg_sq);
        self.steps = state.steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{COptimizer, Kind};

    /// libtorch's own AdamW and this one, on the same parameters and gradients, give the
    /// same parameters to float rounding, with and without weight decay and across a
    /// change of the learning rate; a restored state goes on exactly as the original.
    #[test]
    fn matches_libtorchs_adamw_and_resumes_bit_for_bit() {
        for wd in [0.0, 0.01] {
            tch::manual_seed(7);
            let shapes = [vec![5, 3], vec![7]];
            let theirs: Vec<Tensor> = shapes
                .iter()
                .map(|s| {
                    Tensor::randn(s.as_slice(), (Kind::Float, tch::Device::Cpu))
                        .set_requires_grad(true)
                })
                .collect();
            let mine: Vec<Tensor> = theirs
                .iter()
                .map(|t| t.detach().copy().set_requires_grad(true))
                .collect();
            let cfg = AdamWConfig {
                lr: 1e-2,
                weight_decay: wd,
                ..AdamWConfig::default()
            };
            let mut c =
                COptimizer::adamw(cfg.lr, cfg.beta1, cfg.beta2, wd, cfg.eps, false).unwrap();
            for p in &theirs {
                c.add_parameters(p, 0).unwrap();
            }
            let mut a = AdamW {
                cfg,
                params: mine.iter().map(Tensor::shallow_clone).collect(),
                exp_avg: Vec::new(),
                exp_avg_sq: Vec::new(),
                steps: 0,
            };
            let all_grads: Vec<Vec<Tensor>> = (0..6)
                .map(|_| {
                    shapes
                        .iter()
                        .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, tch::Device::Cpu)))
                        .collect()
                })
                .collect();
            let mut saved = None;
            for (step, grads) in all_grads.iter().enumerate() {
                if step == 3 {
                    c.set_learning_rate(3e-3).unwrap();
                    a.set_lr(3e-3).unwrap();
                    saved = Some((
                        a.state(),
                        mine.iter().map(|t| t.detach().copy()).collect::<Vec<_>>(),
                    ));
                }
                c.zero_grad().unwrap();
                a.zero_grad().unwrap();
                for ((t, m), g) in theirs.iter().zip(&mine).zip(grads) {
                    (t * g).sum(Kind::Float).backward();
                    (m * g).sum(Kind::Float).backward();
                }
                c.step().unwrap();
                a.step().unwrap();
                for (t, m) in theirs.iter().zip(&mine) {
                    let diff = (t - m).abs().max().double_value(&[]);
                    let scale = t.abs().max().double_value(&[]);
                    assert!(diff <= 1e-6 * scale, "wd {wd}, step {step}: off by {diff}");
                }
            }
            // Replaying steps 3..6 from the saved state reaches the same parameters.
            let (state, values) = saved.unwrap();
            assert_eq!(state.steps, 3);
            let again: Vec<Tensor> = values
                .into_iter()
                .map(|t| t.set_requires_grad(true))
                .collect();
            let mut b = AdamW {
                cfg,
                params: again.iter().map(Tensor::shallow_clone).collect(),
                exp_avg: Vec::new(),
                exp_avg_sq: Vec::new(),
                steps: 0,
            };
            b.set_state(state).unwrap();
            // The learning rate is the schedule's, set before each step, not state.
            b.set_lr(3e-3).unwrap();
            for grads in &all_grads[3..] {
                b.zero_grad().unwrap();
                for (p, g) in again.iter().zip(grads) {
                    (p * g).sum(Kind::Float).backward();
                }
                b.step().unwrap();
            }
            for (p, m) in again.iter().zip(&mine) {
                assert!(p.equal(m), "wd {wd}: resumed {p} vs {m}");
            }
        }
    }
}
