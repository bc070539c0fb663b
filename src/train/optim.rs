//! AdamW over the trainable parameters (libtorch's implementation).

use tch::{COptimizer, Tensor};

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
    inner: COptimizer,
    params: Vec<Tensor>,
}

impl AdamW {
    pub fn new(store: &ParamStore, cfg: AdamWConfig) -> Result<Self> {
        let params: Vec<Tensor> = store
            .trainable()
            .into_iter()
            .map(|(_, t)| t.shallow_clone())
            .collect();
        if params.is_empty() {
            return Err(Error::Input("no trainable parameters".into()));
        }
        let mut inner = COptimizer::adamw(
            cfg.lr,
            cfg.beta1,
            cfg.beta2,
            cfg.weight_decay,
            cfg.eps,
            false,
        )?;
        for p in &params {
            inner.add_parameters(p, 0)?;
        }
        Ok(AdamW { inner, params })
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        Ok(self.inner.zero_grad()?)
    }

    pub fn step(&mut self) -> Result<()> {
        Ok(self.inner.step()?)
    }

    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        Ok(self.inner.set_learning_rate(lr)?)
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }
}
