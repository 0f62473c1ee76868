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
//! Sharded across ranks (ZeRO-1, a [`Partition`] other than the whole), an optimizer holds
//! the moments, and in bf16 the f32 masters, of its rank's part of each group only, and
//! updates that part: the ranks then exchange their parts of the weights
//! ([`crate::ranks::Ranks::gather_weights`]). In f32 the masters are the model's weights,
//! which every rank holds whole.
//!
//! The checkpointed state names each parameter's moments (`exp_avg.<name>`,
//! `exp_avg_sq.<name>`) and the step count; a rank's part of a sharded state names each
//! group's part (`exp_avg.decayed`, `exp_avg_sq.not_decayed`, ...). Either loads into any
//! partition ([`AdamW::load_state`]).

use std::collections::BTreeMap;
use std::ops::Range;

use coconut_torch_ext::{fused_adamw, AdamWStep};
use tch::{Kind, Tensor};

use crate::flat::{part_of, FlatLayout, Group, Partition};
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
    partition: Partition,
    /// (numel) in the kind the model computes in: its variables are views of it. In f32
    /// these are the masters themselves.
    weights: Tensor,
    /// This rank's part of each group, in group order.
    parts: Vec<Part>,
    step: i64,
    /// (1) f32 on the parameters' device: the step count the fused kernel reads.
    step_tensor: Tensor,
}

/// A rank's part of one group of the flat buffers.
#[derive(Debug)]
struct Part {
    /// The elements of the group it covers (group-relative, padding included).
    range: Range<i64>,
    /// f32: a view of the weights when the model computes in f32, its own buffer otherwise.
    masters: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
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
        Self::sharded(variables, config, compute, Partition::WHOLE)
    }

    /// [`AdamW::new`] holding only `partition`'s part of the state (every rank of a
    /// sharded run makes its own, from the same weights).
    pub fn sharded(
        variables: impl IntoIterator<Item = (String, Tensor)>,
        config: AdamWConfig,
        compute: Kind,
        partition: Partition,
    ) -> Self {
        let variables: Vec<(String, Tensor)> = variables.into_iter().collect();
        let layout = FlatLayout::of(&variables, partition.ranks);
        let device = variables.first().map_or(tch::Device::Cpu, |(_, t)| t.device());
        let variable = |name: &str| -> Tensor {
            let (_, tensor) = variables.iter().find(|(n, _)| n == name).expect("a member");
            tensor.detach()
        };
        // The f32 masters are one buffer when the model computes in f32 (they are its
        // weights) or when this optimizer holds them all; a rank of a sharded run in another
        // kind holds only its parts of them, so no rank ever holds them all.
        let whole_masters = (compute == Kind::Float || partition.is_whole())
            .then(|| layout.zeros(Kind::Float, device));
        let weights = match &whole_masters {
            Some(masters) if compute == Kind::Float => masters.shallow_clone(),
            _ => layout.zeros(compute, device),
        };
        tch::no_grad(|| {
            for (member, view) in layout.members.iter().zip(layout.member_views(&weights)) {
                view.shallow_clone().copy_(&variable(&member.name));
            }
            if let Some(masters) = whole_masters.as_ref().filter(|_| compute != Kind::Float) {
                for (member, view) in layout.members.iter().zip(layout.member_views(masters)) {
                    view.shallow_clone().copy_(&variable(&member.name));
                }
            }
        });
        let parts = layout
            .groups
            .iter()
            .map(|group| {
                let range = group.part(partition);
                let len = range.end - range.start;
                let masters =
                    match &whole_masters {
                        Some(masters) => masters.narrow(0, group.offset + range.start, len),
                        None => {
                            let own = Tensor::zeros([len], (Kind::Float, device));
                            for member in &layout.members[group.members.clone()] {
                                let start = member.offset - group.offset;
                                let Some(both) = overlap(&(start..start + member.numel), &range)
                                else {
                                    continue;
                                };
                                let n = both.end - both.start;
                                let values = variable(&member.name).flatten(0, -1);
                                tch::no_grad(|| {
                                    own.narrow(0, both.start - range.start, n)
                                        .copy_(&values.narrow(0, both.start - start, n))
                                });
                            }
                            own
                        }
                    };
                let zeros = || Tensor::zeros([len], (Kind::Float, device));
                Part { range, masters, exp_avg: zeros(), exp_avg_sq: zeros() }
            })
            .collect();
        tch::no_grad(|| {
            for (member, view) in layout.members.iter().zip(layout.member_views(&weights)) {
                // set_data swaps the storage under the same variable: the model, the
                // VarStore and every shallow clone see the view.
                let (_, tensor) =
                    variables.iter().find(|(n, _)| *n == member.name).expect("a member");
                tensor.shallow_clone().set_data(&view);
            }
        });
        let step_tensor = Tensor::zeros([1], (Kind::Float, device));
        Self { config, layout, partition, weights, parts, step: 0, step_tensor }
    }

    /// Forgets the moments (a new optimizer, as the paper does at a stage switch).
    pub fn reset(&mut self) {
        tch::no_grad(|| {
            for part in &mut self.parts {
                let _ = part.exp_avg.zero_();
                let _ = part.exp_avg_sq.zero_();
            }
        });
        self.step = 0;
    }

    /// Number of updates since the last reset.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// The kind the model computes in: f32, or the kind of the masters' copies.
    pub fn compute_kind(&self) -> Kind {
        self.weights.kind()
    }

    /// The layout of the buffers (padded for the partition's ranks).
    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// The part of the state this optimizer holds.
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The flat buffer the model's variables are views of, in the compute kind.
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    /// Bytes of the state this optimizer holds beyond the model's weights: the moments, and
    /// the f32 masters when the model computes in another kind.
    pub fn state_bytes(&self) -> i64 {
        let own_masters = self.compute_kind() != Kind::Float;
        let per_part = |p: &Part| (p.range.end - p.range.start) * 4 * (2 + i64::from(own_masters));
        self.parts.iter().map(per_part).sum()
    }

    /// The f32 master weights by name, for a checkpoint's model file: what the model's
    /// variables hold, at full precision. `None` when they are spread over the ranks (a
    /// sharded optimizer of a bf16 model): [`crate::ranks::Ranks::gather_masters`]
    /// collects them.
    pub fn masters(&self) -> Option<Vec<(String, Tensor)>> {
        if self.compute_kind() == Kind::Float {
            return Some(self.named(&self.weights));
        }
        self.partition.is_whole().then(|| {
            let mut named = Vec::new();
            for (group, part) in self.layout.groups.iter().zip(&self.parts) {
                for member in &self.layout.members[group.members.clone()] {
                    let view = part.masters.narrow(0, member.offset - group.offset, member.numel);
                    named.push((member.name.clone(), view.view(member.shape.as_slice())));
                }
            }
            named
        })
    }

    /// Writes this rank's part of the f32 masters into `flat` (f32, of this layout) at its
    /// place: the first half of gathering them.
    pub fn write_master_parts(&self, flat: &Tensor) {
        tch::no_grad(|| {
            for (group, part) in self.layout.groups.iter().zip(&self.parts) {
                let len = part.range.end - part.range.start;
                flat.narrow(0, group.offset + part.range.start, len).copy_(&part.masters);
            }
        });
    }

    /// Every parameter's view of `flat` (a buffer of this layout), by name.
    pub fn named(&self, flat: &Tensor) -> Vec<(String, Tensor)> {
        let views = self.layout.member_views(flat);
        self.layout.members.iter().map(|m| m.name.clone()).zip(views).collect()
    }

    /// One AdamW update of this optimizer's part from the sums of `grads` (in the same
    /// layout; a parameter without a sum is not updated, as in PyTorch), then the copies of
    /// that part rewritten from the masters.
    ///
    /// # Panics
    /// If `grads` holds the gradients of other parameters.
    pub fn step(&mut self, grads: &mut Gradients) {
        assert_eq!(grads.layout(), &self.layout, "gradients of other parameters");
        self.step += 1;
        let AdamWConfig { lr, betas: (beta1, beta2), eps, weight_decay } = self.config;
        let present = grads.present().to_vec();
        let flat_grads = grads.flat().shallow_clone();
        let copies = self.compute_kind() != Kind::Float;
        tch::no_grad(|| {
            let _ = self.step_tensor.fill_(self.step as f64);
            for (group, part) in self.layout.groups.iter().zip(&self.parts) {
                let weight_decay = if group.decayed { weight_decay } else { 0.0 };
                let step = AdamWStep { lr, beta1, beta2, weight_decay, eps };
                let lists = part_lists(group, part, &self.layout, &present, &flat_grads);
                if lists[0].is_empty() {
                    continue;
                }
                let [p, g, m, v] = lists.each_ref().map(|l| l.iter().collect::<Vec<&Tensor>>());
                let steps = vec![&self.step_tensor; p.len()];
                fused_adamw(&p, &g, &m, &v, &steps, step).expect("the fused AdamW kernel runs");
                if copies {
                    let len = part.range.end - part.range.start;
                    let mut copy = self.weights.narrow(0, group.offset + part.range.start, len);
                    copy.copy_(&part.masters);
                }
            }
        });
    }

    /// The moments and step as named tensors, for a checkpoint: per parameter when this
    /// optimizer holds the whole state, per group part otherwise (padding left out).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for (m, prefix) in MOMENTS.into_iter().enumerate() {
            if self.partition.is_whole() {
                for (group, part) in self.layout.groups.iter().zip(&self.parts) {
                    for member in &self.layout.members[group.members.clone()] {
                        let view =
                            part.moments()[m].narrow(0, member.offset - group.offset, member.numel);
                        let name = format!("{prefix}.{}", member.name);
                        out.push((name, view.view(member.shape.as_slice())));
                    }
                }
            } else {
                for (group, part) in self.layout.groups.iter().zip(&self.parts) {
                    let held = saved_range(group, self.partition);
                    let view = part.moments()[m].narrow(0, 0, held.end - held.start);
                    out.push((format!("{prefix}.{}", group_key(group)), view));
                }
            }
        }
        out
    }

    /// Restores the moments and the step from a state saved by an optimizer of
    /// `saved_ranks` parts (what [`AdamW::state`] gave on each; 1: one state of every
    /// parameter), whatever this optimizer's partition: the state is re-partitioned.
    /// `read(q)` returns saved part `q`; only the parts that overlap this optimizer's are
    /// read, one at a time. Errors name the missing or mismatched tensor.
    pub fn load_state(
        &mut self,
        saved_ranks: usize,
        mut read: impl FnMut(usize) -> Result<BTreeMap<String, Tensor>, String>,
    ) -> Result<(), String> {
        let mut step = None;
        for q in 0..saved_ranks {
            let saved = Partition { rank: q, ranks: saved_ranks };
            // The elements of each group that part q holds and this optimizer needs.
            let overlaps: Vec<(usize, Range<i64>, Range<i64>)> = (self.layout.groups.iter())
                .zip(&self.parts)
                .enumerate()
                .filter_map(|(g, (group, part))| {
                    let theirs = saved_range(group, saved);
                    let both = overlap(&theirs, &part.range)?;
                    Some((g, theirs, both))
                })
                .collect();
            if overlaps.is_empty() && !(q + 1 == saved_ranks && step.is_none()) {
                continue;
            }
            let state = read(q)?;
            let saved_step = state.get("step").ok_or("missing tensor step")?.int64_value(&[]);
            if step.is_some_and(|s| s != saved_step) {
                return Err(format!("part {q} was saved at step {saved_step}, not {step:?}"));
            }
            step = Some(saved_step);
            for (m, prefix) in MOMENTS.into_iter().enumerate() {
                for (g, theirs, both) in &overlaps {
                    let (group, part) = (&self.layout.groups[*g], &self.parts[*g]);
                    let vector = self.saved_vector(&state, prefix, group, saved, theirs)?;
                    let len = both.end - both.start;
                    let source = vector.narrow(0, both.start - theirs.start, len);
                    tch::no_grad(|| {
                        let target =
                            part.moments()[m].narrow(0, both.start - part.range.start, len);
                        target.shallow_clone().copy_(&source);
                    });
                }
            }
        }
        self.step = step.ok_or("no saved part")?;
        Ok(())
    }

    /// Group `group`'s moment `prefix` as saved by part `saved` (elements `theirs` of the
    /// group), one f32 vector.
    fn saved_vector(
        &self,
        state: &BTreeMap<String, Tensor>,
        prefix: &str,
        group: &Group,
        saved: Partition,
        theirs: &Range<i64>,
    ) -> Result<Tensor, String> {
        let get = |key: &str, shape: &[i64]| -> Result<Tensor, String> {
            let tensor = state.get(key).ok_or_else(|| format!("missing tensor {key}"))?;
            if tensor.size() != shape {
                return Err(format!(
                    "tensor {key} has shape {:?}, expected {shape:?}",
                    tensor.size()
                ));
            }
            Ok(tensor.to_kind(Kind::Float).flatten(0, -1))
        };
        if !saved.is_whole() {
            return get(&format!("{prefix}.{}", group_key(group)), &[theirs.end - theirs.start]);
        }
        let members = &self.layout.members[group.members.clone()];
        let vectors = members
            .iter()
            .map(|m| get(&format!("{prefix}.{}", m.name), &m.shape))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&vectors, 0))
    }
}

/// The names of the two moments in a checkpoint, in [`Part::moments`] order.
const MOMENTS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

impl Part {
    /// The two moments, in [`MOMENTS`] order.
    fn moments(&self) -> [&Tensor; 2] {
        [&self.exp_avg, &self.exp_avg_sq]
    }
}

/// The name of a group in a sharded state.
fn group_key(group: &Group) -> &'static str {
    if group.decayed {
        "decayed"
    } else {
        "not_decayed"
    }
}

/// The elements of `group` that `partition`'s part holds, padding left out (empty when the
/// part is all padding): the parts of a layout padded for `partition.ranks` ranks.
fn saved_range(group: &Group, partition: Partition) -> Range<i64> {
    let part = part_of(group.numel, partition);
    part.start.min(group.numel)..part.end.min(group.numel)
}

/// The elements two ranges share, if any.
fn overlap(a: &Range<i64>, b: &Range<i64>) -> Option<Range<i64>> {
    let both = a.start.max(b.start)..a.end.min(b.end);
    (both.start < both.end).then_some(both)
}

/// The fused kernel's four lists (masters, gradients, moments) for `part` of `group`: the
/// whole part as one entry when every parameter of the group has a sum, else one entry per
/// parameter with a sum, cut to the part.
fn part_lists(
    group: &Group,
    part: &Part,
    layout: &FlatLayout,
    present: &[bool],
    flat_grads: &Tensor,
) -> [Vec<Tensor>; 4] {
    let len = part.range.end - part.range.start;
    let grads = flat_grads.narrow(0, group.offset + part.range.start, len);
    if present[group.members.clone()].iter().all(|&p| p) {
        return [&part.masters, &grads, &part.exp_avg, &part.exp_avg_sq]
            .map(|t| vec![t.shallow_clone()]);
    }
    let mut lists: [Vec<Tensor>; 4] = Default::default();
    for index in group.members.clone().filter(|&i| present[i]) {
        let member = &layout.members[index];
        let start = member.offset - group.offset;
        let Some(both) = overlap(&(start..start + member.numel), &part.range) else { continue };
        let (at, n) = (both.start - part.range.start, both.end - both.start);
        for (list, tensor) in
            lists.iter_mut().zip([&part.masters, &grads, &part.exp_avg, &part.exp_avg_sq])
        {
            list.push(tensor.narrow(0, at, n));
        }
    }
    lists
}

#[cfg(test)]
mod tests {
    use super::*;
    use coconut_model::testing::assert_close;
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
        assert_close(&w, &expected_w, tol, "w");
        assert_close(&b, &expected_b, tol, "b");
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
            assert_close(fused, reference, coconut_testing::Tolerance::scaled(1e-6), "parameter");
        }
    }

    /// Ranks that each update their part of the state, then hand each other their parts of
    /// the weights (what the all-gather does), end with the weights of one optimizer holding
    /// the whole state, bit for bit, in f32 and in bf16 (copies and f32 masters alike), a
    /// parameter without a gradient in one step left alone. Their saved parts load into
    /// other partitions and back into a whole optimizer unchanged.
    #[test]
    fn parts_updated_apart_then_gathered_are_the_whole_update() {
        let config = AdamWConfig { lr: 1e-2, betas: (0.9, 0.99), eps: 1e-8, weight_decay: 0.1 };
        let shapes: [&[i64]; 4] = [&[13, 7], &[5], &[9, 4], &[3]];
        let same =
            |a: &Tensor, b: &Tensor, what: &str| assert!(a.detach().equal(&b.detach()), "{what}");
        for kind in [Kind::Float, Kind::BFloat16] {
            for ranks in [2, 3] {
                tch::manual_seed(3);
                let init: Vec<Tensor> =
                    shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
                let model = || -> Vec<(String, Tensor)> {
                    let copy = |(i, t): (usize, &Tensor)| {
                        (format!("p{i}"), t.copy().set_requires_grad(true))
                    };
                    init.iter().enumerate().map(copy).collect()
                };
                let whole_vars = model();
                let mut whole = AdamW::new(shallow(&whole_vars), config, kind);
                let rank_vars: Vec<_> = (0..ranks).map(|_| model()).collect();
                let mut parts: Vec<AdamW> = (0..ranks)
                    .map(|rank| {
                        let partition = Partition { rank, ranks };
                        AdamW::sharded(shallow(&rank_vars[rank]), config, kind, partition)
                    })
                    .collect();
                for step in 1..=4 {
                    let targets: Vec<Tensor> =
                        shapes.iter().map(|s| Tensor::randn(*s, (kind, Device::Cpu))).collect();
                    // Step 2: the second parameter takes no part in the loss.
                    let loss = |vars: &[(String, Tensor)]| {
                        (0..shapes.len())
                            .filter(|&i| step != 2 || i != 1)
                            .map(|i| {
                                let v = &vars[i].1;
                                (v * &targets[i]).sum(Kind::Float) + v.square().sum(Kind::Float)
                            })
                            .reduce(|a, b| a + b)
                            .unwrap()
                    };
                    let mut grads = Gradients::new(shallow(&whole_vars));
                    grads.backward(&loss(&whole_vars));
                    whole.step(&mut grads);
                    for (vars, part) in rank_vars.iter().zip(&mut parts) {
                        let mut grads = Gradients::for_ranks(shallow(vars), ranks);
                        grads.backward(&loss(vars));
                        part.step(&mut grads);
                    }
                    hand_over_parts(&parts);
                }
                for (rank, vars) in rank_vars.iter().enumerate() {
                    for ((name, ours), (_, theirs)) in vars.iter().zip(&whole_vars) {
                        assert_eq!(ours.kind(), kind);
                        let what = format!("{kind:?}, rank {rank} of {ranks}: {name}");
                        same(ours, theirs, &what);
                    }
                }
                // The f32 masters, gathered from the parts.
                let flat = parts[0].layout().zeros(Kind::Float, Device::Cpu);
                parts.iter().for_each(|part| part.write_master_parts(&flat));
                for ((name, ours), (_, theirs)) in
                    parts[0].named(&flat).iter().zip(&whole.masters().unwrap())
                {
                    same(ours, theirs, &format!("{kind:?}, {ranks} ranks: master {name}"));
                }
                // Saved in `ranks` parts, loaded into `ranks + 1` parts, saved again and
                // loaded into a whole optimizer: the whole optimizer's state.
                let mut more: Vec<AdamW> = (0..ranks + 1)
                    .map(|rank| {
                        let partition = Partition { rank, ranks: ranks + 1 };
                        let mut opt = AdamW::sharded(model(), config, kind, partition);
                        opt.load_state(ranks, |q| Ok(parts[q].state().into_iter().collect()))
                            .unwrap();
                        opt
                    })
                    .collect();
                let mut back = AdamW::new(model(), config, kind);
                back.load_state(ranks + 1, |q| Ok(more[q].state().into_iter().collect())).unwrap();
                let mut direct = AdamW::new(model(), config, kind);
                direct.load_state(ranks, |q| Ok(parts[q].state().into_iter().collect())).unwrap();
                assert_eq!((back.step_count(), direct.step_count()), (4, 4));
                let (back, direct, whole) = (back.state(), direct.state(), whole.state());
                for (((name, back), (_, direct)), (_, whole)) in
                    back.iter().zip(&direct).zip(&whole)
                {
                    let what = format!("{kind:?}, {ranks} ranks: state {name}");
                    same(back, direct, &what);
                    same(direct, whole, &what);
                }
                // A moment missing from one part is named.
                more[0].reset();
                let err = more[0]
                    .load_state(ranks, |q| {
                        let mut state: BTreeMap<String, Tensor> =
                            parts[q].state().into_iter().collect();
                        state.remove("exp_avg.decayed");
                        Ok(state)
                    })
                    .unwrap_err();
                assert_eq!(err, "missing tensor exp_avg.decayed");
            }
        }
    }

    /// What the all-gather of the weights does between ranks in one process: every part of
    /// every optimizer's weights, copied to the other optimizers' weights.
    fn hand_over_parts(parts: &[AdamW]) {
        tch::no_grad(|| {
            for (rank, from) in parts.iter().enumerate() {
                let partition = Partition { rank, ranks: parts.len() };
                for group in &from.layout().groups {
                    let range = group.part(partition);
                    let len = range.end - range.start;
                    let source = from.weights().narrow(0, group.offset + range.start, len);
                    for to in parts {
                        to.weights().narrow(0, group.offset + range.start, len).copy_(&source);
                    }
                }
            }
        });
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
        let masters = opt.masters().unwrap();
        assert_eq!(masters[0].1.kind(), Kind::Float);
        let expected = masters[0].1.to_kind(Kind::BFloat16);
        assert!(w.detach().equal(&expected), "the copy is the rounded master");
    }
}
