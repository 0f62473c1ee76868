//! AdamW (Loshchilov & Hutter 2019) over flat parameter buffers, one fused kernel per
//! weight-decay group, with a state that checkpoints can save and restore.
//!
//! The optimizer owns the f32 master weights, laid out flat (see [`crate::flat`]), and the
//! two moments in the same layout. The model's variables become views of the masters, or
//! when the model computes in bf16, of a bf16 copy that every update rewrites from the
//! masters: the copies are made once per optimizer step, and nothing inside a forward pass
//! casts a weight. An update is LibTorch's fused AdamW kernel (`_fused_adamw_`, through
//! `coconut-torch-ext`) once per group: PyTorch's `AdamW` update, with weight decay applied
//! only to parameters of two or more dimensions (matrices and embeddings), as nanoGPT does.
//!
//! The checkpointed state names each parameter's moments (`exp_avg.<name>`,
//! `exp_avg_sq.<name>`) and the step count, whatever the layout.

use std::collections::BTreeMap;

use coconut_torch_ext::{fused_adamw, AdamWStep};
use tch::{Kind, Tensor};

use crate::flat::FlatLayout;
use crate::gradients::Gradients;

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

/// The optimizer: the f32 masters of a model's parameters, their moments and the step
/// count, in flat buffers. The gradients come from a [`Gradients`] accumulator in the same
/// layout, so that whatever happens to them between the backward passes and the update (an
/// all-reduce across ranks, clipping) happens outside it.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    layout: FlatLayout,
    /// (numel) f32: the parameters' values.
    masters: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// (numel) in the model's kind when it is not f32: the values the model computes with.
    copies: Option<Tensor>,
    /// Each group's views of the masters and the two moments, made once.
    group_views: Vec<[Tensor; 3]>,
    step: i64,
    /// (1) f32 on the parameters' device: the step count the fused kernel reads.
    step_tensor: Tensor,
}

impl AdamW {
    /// A fresh optimizer (zero moments) over the model's `variables`, whose values become
    /// the masters. The variables are then rebound to views of the masters, or, with a
    /// `compute` kind other than f32, of the masters' copies in that kind: from here on the
    /// model computes in `compute`.
    pub fn new(
        variables: impl IntoIterator<Item = (String, Tensor)>,
        config: AdamWConfig,
        compute: Kind,
    ) -> Self {
        let variables: Vec<(String, Tensor)> = variables.into_iter().collect();
        let layout = FlatLayout::of(&variables);
        let device = variables.first().map_or(tch::Device::Cpu, |(_, t)| t.device());
        let masters = layout.zeros(Kind::Float, device);
        let copies = (compute != Kind::Float).then(|| layout.zeros(compute, device));
        tch::no_grad(|| {
            let master_views = layout.member_views(&masters);
            let copy_views = copies.as_ref().map(|c| layout.member_views(c));
            for (i, member) in layout.members.iter().enumerate() {
                let (_, variable) =
                    variables.iter().find(|(n, _)| *n == member.name).expect("a member");
                master_views[i].shallow_clone().copy_(variable);
                // set_data swaps the storage under the same variable: the model, the
                // VarStore and every shallow clone see the view.
                let mut variable = variable.shallow_clone();
                match &copy_views {
                    Some(views) => {
                        views[i].shallow_clone().copy_(&master_views[i]);
                        variable.set_data(&views[i]);
                    }
                    None => variable.set_data(&master_views[i]),
                }
            }
        });
        let exp_avg = layout.zeros(Kind::Float, device);
        let exp_avg_sq = layout.zeros(Kind::Float, device);
        let step_tensor = Tensor::zeros([1], (Kind::Float, device));
        let group_views = (0..layout.groups.len())
            .map(|g| {
                [&masters, &exp_avg, &exp_avg_sq].map(|flat| layout.group_views(flat).remove(g))
            })
            .collect();
        Self {
            config,
            layout,
            masters,
            exp_avg,
            exp_avg_sq,
            copies,
            group_views,
            step: 0,
            step_tensor,
        }
    }

    /// Forgets the moments (a new optimizer, as the paper does at a stage switch).
    pub fn reset(&mut self) {
        tch::no_grad(|| {
            let _ = self.exp_avg.zero_();
            let _ = self.exp_avg_sq.zero_();
        });
        self.step = 0;
    }

    /// Number of updates since the last reset.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// The kind the model computes in: f32, or the kind of the masters' copies.
    pub fn compute_kind(&self) -> Kind {
        self.copies.as_ref().map_or(Kind::Float, Tensor::kind)
    }

    /// The f32 master weights by name (views of the masters), for a checkpoint's model
    /// file: what the model's variables hold, at full precision.
    pub fn masters(&self) -> Vec<(String, Tensor)> {
        self.named(&self.masters)
    }

    /// One AdamW update from the sums of `grads` (in the same layout; a parameter without a
    /// sum is not updated, as in PyTorch), then the copies rewritten from the masters.
    ///
    /// # Panics
    /// If `grads` holds the gradients of other parameters.
    pub fn step(&mut self, grads: &mut Gradients) {
        assert_eq!(grads.layout(), &self.layout, "gradients of other parameters");
        self.step += 1;
        let AdamWConfig { lr, betas: (beta1, beta2), eps, weight_decay } = self.config;
        let present = grads.present().to_vec();
        let flat_grads = grads.flat().shallow_clone();
        let grad_groups = grads.group_views();
        tch::no_grad(|| {
            let _ = self.step_tensor.fill_(self.step as f64);
            for (index, group) in self.layout.groups.iter().enumerate() {
                let weight_decay = if group.decayed { weight_decay } else { 0.0 };
                let step = AdamWStep { lr, beta1, beta2, weight_decay, eps };
                let members = &present[group.members.clone()];
                let lists = if members.iter().all(|&p| p) {
                    // The whole group at once: one entry per list.
                    let [masters, exp_avg, exp_avg_sq] = &self.group_views[index];
                    [masters, &grad_groups[index], exp_avg, exp_avg_sq]
                        .map(|t| vec![t.shallow_clone()])
                } else {
                    // Only the parameters with a gradient: one entry each.
                    let mut lists: [Vec<Tensor>; 4] = Default::default();
                    for index in group.members.clone().filter(|&i| present[i]) {
                        let m = &self.layout.members[index];
                        for (list, flat) in lists.iter_mut().zip([
                            &self.masters,
                            &flat_grads,
                            &self.exp_avg,
                            &self.exp_avg_sq,
                        ]) {
                            list.push(flat.narrow(0, m.offset, m.numel));
                        }
                    }
                    lists
                };
                if lists[0].is_empty() {
                    continue;
                }
                let [p, g, m, v] = lists.each_ref().map(|l| l.iter().collect::<Vec<&Tensor>>());
                let steps = vec![&self.step_tensor; p.len()];
                fused_adamw(&p, &g, &m, &v, &steps, step).expect("the fused AdamW kernel runs");
            }
            if let Some(copies) = &mut self.copies {
                copies.copy_(&self.masters);
            }
        });
    }

    /// The moments and step as named tensors, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for (prefix, flat) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
            out.extend(self.named(flat).into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)));
        }
        out
    }

    /// Restores what [`AdamW::state`] produced. Errors name the missing or mismatched tensor.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let step = state.get("step").ok_or("missing tensor step")?;
        tch::no_grad(|| {
            for (prefix, flat) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
                for (name, view) in self.named(flat) {
                    let key = format!("{prefix}.{name}");
                    let src = state.get(&key).ok_or_else(|| format!("missing tensor {key}"))?;
                    if src.size() != view.size() {
                        return Err(format!(
                            "tensor {key} has shape {:?}, expected {:?}",
                            src.size(),
                            view.size()
                        ));
                    }
                    view.shallow_clone().copy_(src);
                }
            }
            Ok(())
        })?;
        self.step = step.int64_value(&[]);
        Ok(())
    }

    /// Each parameter's view of the flat buffer `flat`, by name.
    fn named(&self, flat: &Tensor) -> Vec<(String, Tensor)> {
        let views = self.layout.member_views(flat);
        self.layout.members.iter().map(|m| m.name.clone()).zip(views).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn shallow(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    /// The update PyTorch's `AdamW` makes to one parameter `p` from its gradient `g`,
    /// written out: the reference the fused kernel over flat buffers is held to.
    fn reference_update(
        p: &Tensor,
        g: &Tensor,
        (m, v): &mut (Tensor, Tensor),
        c: AdamWConfig,
        step: i32,
    ) {
        let AdamWConfig { lr, betas: (b1, b2), eps, weight_decay } = c;
        let (bias1, bias2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        tch::no_grad(|| {
            let mut p = p.shallow_clone();
            if p.dim() >= 2 {
                let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
            }
            let _ = m.lerp_(g, 1.0 - b1);
            let _ = v.lerp_(&g.square(), 1.0 - b2);
            let denom = (v.sqrt() / bias2.sqrt() + eps) * (-bias1 / lr);
            let _ = p.addcdiv_(&*m, &denom);
        });
    }

    /// Three steps on a small problem, against `torch.optim.AdamW` with weight decay 0.1 on
    /// the matrix and none on the vector (the values PyTorch 2.11 printed).
    #[test]
    fn matches_pytorch_adamw() {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([2, 2]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.3f32, -0.7]).set_requires_grad(true);
        let config = AdamWConfig { lr: 0.05, betas: (0.9, 0.99), eps: 1e-8, weight_decay: 0.1 };
        let params = [("w".to_string(), w.shallow_clone()), ("b".to_string(), b.shallow_clone())];
        let mut opt = AdamW::new(shallow(&params), config, Kind::Float);
        let mut grads = Gradients::new(params);
        for _ in 0..3 {
            let loss = (&w * &w).sum(Kind::Float) * 0.5
                + w.get(0).get(0) * b.get(1)
                + (&b * &b * &b).sum(Kind::Float);
            grads.clear();
            grads.backward(&loss);
            opt.step(&mut grads);
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

    /// The fused update of flat buffers against the update written out per parameter, on
    /// random parameters and gradients of several shapes, over several steps: within rtol
    /// 1e-6. A parameter without a gradient in one step is left alone by both.
    #[test]
    fn the_fused_flat_update_is_the_per_parameter_update() {
        tch::manual_seed(7);
        let config = AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 };
        let shapes: [&[i64]; 4] = [&[64, 32], &[32], &[100, 16], &[7]];
        let make = || -> Vec<Tensor> {
            shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect()
        };
        let reference_params = make();
        let fused_params: Vec<Tensor> =
            reference_params.iter().map(|t| t.copy().set_requires_grad(true)).collect();
        let named: Vec<(String, Tensor)> =
            (0..shapes.len()).map(|i| (format!("p{i}"), fused_params[i].shallow_clone())).collect();
        let mut opt = AdamW::new(shallow(&named), config, Kind::Float);
        let mut grads = Gradients::new(named);
        let mut moments: Vec<(Tensor, Tensor)> =
            reference_params.iter().map(|p| (p.zeros_like(), p.zeros_like())).collect();
        for step in 1..=5 {
            let targets = make();
            // Step 3: the third parameter takes no part in the loss.
            let used = |i: usize| step != 3 || i != 2;
            let loss = (0..shapes.len())
                .filter(|&i| used(i))
                .map(|i| {
                    let p = &fused_params[i];
                    (p * &targets[i]).sum(Kind::Float) + p.square().sum(Kind::Float)
                })
                .reduce(|a, b| a + b)
                .unwrap();
            grads.clear();
            grads.backward(&loss);
            opt.step(&mut grads);
            for i in (0..shapes.len()).filter(|&i| used(i)) {
                let g = &targets[i] + &reference_params[i] * 2.0;
                reference_update(&reference_params[i], &g, &mut moments[i], config, step);
            }
        }
        for (fused, reference) in fused_params.iter().zip(&reference_params) {
            coconut_model::testing::assert_close(
                fused,
                reference,
                coconut_testing::Tolerance::scaled(1e-6),
                "parameter",
            );
        }
    }

    /// With a bf16 compute kind the model's variables are bf16 views rewritten from the f32
    /// masters at every step; the masters and the saved weights stay f32.
    #[test]
    fn bf16_copies_follow_the_f32_masters() {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).view([2, 2]).set_requires_grad(true);
        let config = AdamWConfig { lr: 0.05, betas: (0.9, 0.99), eps: 1e-8, weight_decay: 0.1 };
        let params = [("w".to_string(), w.shallow_clone())];
        let mut opt = AdamW::new(shallow(&params), config, Kind::BFloat16);
        assert_eq!(w.kind(), Kind::BFloat16, "the variable computes in bf16");
        assert!(w.requires_grad());
        let mut grads = Gradients::new(params);
        for _ in 0..2 {
            grads.clear();
            grads.backward(&(&w * &w).sum(Kind::Float));
            opt.step(&mut grads);
        }
        let masters = opt.masters();
        assert_eq!(masters[0].1.kind(), Kind::Float);
        let expected = masters[0].1.to_kind(Kind::BFloat16);
        assert!(w.detach().equal(&expected), "the copy is the rounded master");
    }
}
