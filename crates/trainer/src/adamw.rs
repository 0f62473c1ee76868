//! AdamW (Loshchilov & Hutter 2019) whose state can be saved and restored.
//!
//! tch's optimizers keep their moments inside libtorch with no way to read them back, and
//! a resumed run must continue with the same moments to end with the same weights. So the
//! update is written out here over named tensors: it is the PyTorch `AdamW` update, with
//! weight decay applied only to 2-D parameters (matrices and embeddings), as nanoGPT does.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// AdamW hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// First and second moment decay.
    pub betas: (f64, f64),
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay for 2-D parameters.
    pub weight_decay: f64,
}

/// The optimizer: the parameters by checkpoint name, their moments and the step count. It
/// does the update math only; the gradients come from a [`crate::gradients::Gradients`]
/// accumulator, so that whatever happens to them between the backward passes and the
/// update (an all-reduce across ranks, clipping) happens outside it.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: BTreeMap<String, Tensor>,
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
    step: i64,
}

impl AdamW {
    /// A fresh optimizer over `params` (zero moments).
    pub fn new(params: impl IntoIterator<Item = (String, Tensor)>, config: AdamWConfig) -> Self {
        let params: BTreeMap<String, Tensor> = params.into_iter().collect();
        let zeros = |p: &Tensor| tch::no_grad(|| p.zeros_like().to_kind(Kind::Float));
        let exp_avg = params.iter().map(|(n, p)| (n.clone(), zeros(p))).collect();
        let exp_avg_sq = params.iter().map(|(n, p)| (n.clone(), zeros(p))).collect();
        Self { config, params, exp_avg, exp_avg_sq, step: 0 }
    }

    /// Forgets the moments (a new optimizer, as the paper does at a stage switch).
    pub fn reset(&mut self) {
        tch::no_grad(|| {
            for t in self.exp_avg.values_mut().chain(self.exp_avg_sq.values_mut()) {
                let _ = t.zero_();
            }
        });
        self.step = 0;
    }

    /// Number of updates since the last reset.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// One AdamW update from `grads` (by parameter name; a parameter without one is not
    /// updated, as in PyTorch). The gradients are consumed: they are dropped as soon as
    /// their parameter is updated.
    pub fn step(&mut self, grads: BTreeMap<String, Tensor>) {
        self.step += 1;
        let AdamWConfig { lr, betas: (b1, b2), eps, weight_decay } = self.config;
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2 = 1.0 - b2.powi(self.step as i32);
        tch::no_grad(|| {
            for (name, g) in grads {
                let p = self.params.get_mut(&name).expect("a gradient belongs to a parameter");
                if weight_decay > 0.0 && p.dim() >= 2 {
                    let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                // In place where possible: an embedding matrix is large, so every
                // temporary of its size counts in peak memory.
                let m = self.exp_avg.get_mut(&name).expect("a moment per parameter");
                let _ = m.lerp_(&g, 1.0 - b1); // m = b1 m + (1 - b1) g
                let v = self.exp_avg_sq.get_mut(&name).expect("a moment per parameter");
                let _ = v.lerp_(&g.square(), 1.0 - b2); // v = b2 v + (1 - b2) g^2

                // p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps), folded into the divisor.
                let mut denom = v.sqrt();
                let _ =
                    denom.g_div_scalar_(bias2.sqrt()).g_add_scalar_(eps).g_mul_scalar_(-bias1 / lr);
                let _ = p.addcdiv_(&*m, &denom);
            }
        });
    }

    /// The moments and step as named tensors, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for (n, t) in &self.exp_avg {
            out.push((format!("exp_avg.{n}"), t.shallow_clone()));
        }
        for (n, t) in &self.exp_avg_sq {
            out.push((format!("exp_avg_sq.{n}"), t.shallow_clone()));
        }
        out
    }

    /// Restores what [`AdamW::state`] produced. Errors name the missing or mismatched tensor.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let step = state.get("step").ok_or("missing tensor step")?;
        tch::no_grad(|| {
            for (prefix, moments) in
                [("exp_avg", &mut self.exp_avg), ("exp_avg_sq", &mut self.exp_avg_sq)]
            {
                for (n, t) in moments.iter_mut() {
                    let key = format!("{prefix}.{n}");
                    let src = state.get(&key).ok_or_else(|| format!("missing tensor {key}"))?;
                    if src.size() != t.size() {
                        return Err(format!(
                            "tensor {key} has shape {:?}, expected {:?}",
                            src.size(),
                            t.size()
                        ));
                    }
                    t.copy_(src);
                }
            }
            Ok(())
        })?;
        self.step = step.int64_value(&[]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradients::Gradients;

    /// Three steps on a small problem, against `torch.optim.AdamW` with weight decay 0.1 on
    /// the matrix and none on the vector (the values PyTorch 2.11 printed).
    #[test]
    fn matches_pytorch_adamw() {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([2, 2]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.3f32, -0.7]).set_requires_grad(true);
        let config = AdamWConfig { lr: 0.05, betas: (0.9, 0.99), eps: 1e-8, weight_decay: 0.1 };
        let params = [("w".to_string(), w.shallow_clone()), ("b".to_string(), b.shallow_clone())];
        let mut opt =
            AdamW::new(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())), config);
        let mut grads = Gradients::new(params);
        for _ in 0..3 {
            let loss = (&w * &w).sum(Kind::Float) * 0.5
                + w.get(0).get(0) * b.get(1)
                + (&b * &b * &b).sum(Kind::Float);
            grads.backward(&loss);
            opt.step(grads.take());
        }
        let expected_w =
            Tensor::from_slice(&[0.843_120_4f32, -1.821_054_1, 0.344_088_2, 2.806_081])
                .view([2, 2]);
        let expected_b = Tensor::from_slice(&[0.154_699_37f32, -0.850_185_9]);
        // The values torch.optim.AdamW gives for the same three steps.
        let tol = coconut_testing::Tolerance::scaled(1e-5);
        coconut_model::testing::assert_close(&w, &expected_w, tol, "w");
        coconut_model::testing::assert_close(&b, &expected_b, tol, "b");
        assert_eq!(opt.step_count(), 3);
    }
}
