//! Gradients with a home of their own: one flat f32 buffer (see [`crate::flat`]) that
//! backward passes add into and the optimizer reads. Between the two is where
//! data-parallel training sums them across ranks, and where gradient clipping reads their
//! global norm: one operator each on the whole buffer.
//!
//! Gradients live here rather than in each parameter's `.grad`: in f32 whatever the kind the
//! model computes in (bf16 gradients are summed into f32), and in the layout the fused
//! optimizer and the collectives read.

use std::collections::BTreeMap;
use std::ops::Range;

use tch::{Kind, Tensor};

use crate::flat::FlatLayout;

/// The summed gradients of a model's parameters.
#[derive(Debug)]
pub struct Gradients {
    layout: FlatLayout,
    /// The model's variables, in member order.
    params: Vec<Tensor>,
    /// (numel) f32: every parameter's sum at its offset.
    flat: Tensor,
    /// Each member's view of `flat`.
    views: Vec<Tensor>,
    /// Each group's view of `flat`.
    groups: Vec<Tensor>,
    /// Whether each member has a sum since the last [`Gradients::clear`] (its part of
    /// `flat` is stale otherwise).
    present: Vec<bool>,
    /// For clipping at `max_norm`: (max_norm, 1e-6 and 1 / max_norm as tensors on the
    /// device), made at the first clip.
    clip_constants: Option<(f64, Tensor, Tensor)>,
}

impl Gradients {
    /// An empty accumulator for `variables` (the model's, name and tensor), laid out by
    /// [`FlatLayout::of`].
    pub fn new(variables: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Self::for_ranks(variables, 1)
    }

    /// [`Gradients::new`] with each group padded for an optimizer sharded over `ranks`
    /// ranks (the layout of [`crate::adamw::AdamW::sharded`]).
    pub fn for_ranks(variables: impl IntoIterator<Item = (String, Tensor)>, ranks: usize) -> Self {
        let variables: Vec<(String, Tensor)> = variables.into_iter().collect();
        let layout = FlatLayout::of(&variables, ranks);
        let device = variables.first().map_or(tch::Device::Cpu, |(_, t)| t.device());
        let params = layout
            .members
            .iter()
            .map(|m| {
                let (_, t) = variables.iter().find(|(n, _)| *n == m.name).expect("a member");
                t.shallow_clone()
            })
            .collect();
        let flat = layout.zeros(Kind::Float, device);
        let views = layout.member_views(&flat);
        let groups = layout.group_views(&flat);
        let present = vec![false; layout.members.len()];
        Self { layout, params, flat, views, groups, present, clip_constants: None }
    }

    /// The layout of the buffer.
    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// Backpropagates `loss` and adds the parameters' gradients to the sums. A parameter
    /// the loss does not reach gets none (and is not updated, as in PyTorch).
    pub fn backward(&mut self, loss: &Tensor) {
        self.backward_and_grads(loss, &[], false);
    }

    /// [`Gradients::backward`] that also returns the gradients of `others`, tensors of the
    /// graph that are not parameters (undefined where the loss does not reach one). With
    /// `keep_graph` the graph can be walked again from another root.
    pub fn backward_and_grads(
        &mut self,
        loss: &Tensor,
        others: &[&Tensor],
        keep_graph: bool,
    ) -> Vec<Tensor> {
        let inputs: Vec<&Tensor> = self.params.iter().chain(others.iter().copied()).collect();
        let mut grads = Tensor::run_backward(&[loss], &inputs, keep_graph, false);
        let others_grads = grads.split_off(self.params.len());
        for (index, g) in grads.iter().enumerate().filter(|(_, g)| g.defined()) {
            self.add_to(index, g);
        }
        others_grads
    }

    /// Adds `grad` to the sum of the parameter `name` (a gradient computed elsewhere).
    ///
    /// # Panics
    /// If there is no such parameter, or the shapes differ.
    pub fn accumulate(&mut self, name: &str, grad: &Tensor) {
        let index = self.layout.members.iter().position(|m| m.name == name);
        let index = index.unwrap_or_else(|| panic!("no parameter {name}"));
        self.add_to(index, grad);
    }

    /// Adds `grad` to member `index`'s sum: a copy first, then sums (in f32 whatever the
    /// gradient's kind).
    fn add_to(&mut self, index: usize, grad: &Tensor) {
        tch::no_grad(|| {
            let mut view = self.views[index].shallow_clone();
            if self.present[index] {
                let _ = view.g_add_(grad);
            } else {
                view.copy_(grad);
            }
        });
        self.present[index] = true;
    }

    /// A copy of every sum, by parameter name (parameters without one left out).
    pub fn sums(&self) -> BTreeMap<String, Tensor> {
        let members = self.layout.members.iter().zip(&self.views).zip(&self.present);
        members.filter(|(_, &p)| p).map(|((m, v), _)| (m.name.clone(), v.copy())).collect()
    }

    /// The flat buffer of every sum, (numel) f32, with zeros where a parameter has none.
    pub fn flat(&mut self) -> &Tensor {
        self.zero_absent();
        &self.flat
    }

    /// Each group's part of [`Gradients::flat`] (stale where a parameter has no sum).
    pub fn group_views(&self) -> &[Tensor] {
        &self.groups
    }

    /// Whether each parameter (in layout order) has a sum.
    pub fn present(&self) -> &[bool] {
        &self.present
    }

    /// Marks which parameters have a sum (after the ranks' sums were added up).
    pub fn set_present(&mut self, present: &[bool]) {
        self.present.copy_from_slice(present);
    }

    /// Whether no parameter has a sum.
    pub fn is_empty(&self) -> bool {
        !self.present.contains(&true)
    }

    /// The sum of the parameter `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        let index = self.layout.members.iter().position(|m| m.name == name)?;
        self.present[index].then(|| &self.views[index])
    }

    /// The global L2 norm of the sums (0 when there are none).
    pub fn norm(&mut self) -> f64 {
        tch::no_grad(|| self.flat().norm().double_value(&[]))
    }

    /// Scales the sums by `min(1, max_norm / (norm + 1e-6))`, as PyTorch's
    /// `clip_grad_norm_` does, without reading the norm on the host (on a GPU a read would
    /// wait for every queued kernel): the sums are divided by
    /// `max(norm + 1e-6, max_norm) / max_norm`.
    pub fn clip_norm(&mut self, max_norm: f64) {
        tch::no_grad(|| {
            let total = self.flat().norm(); // a scalar on the device
            let divisor = self.clip_divisor(max_norm, total);
            let _ = self.flat.g_div_(&divisor);
        });
    }

    /// [`Gradients::clip_norm`] on ranks that each hold their `parts` of the summed
    /// gradients (ranges of the flat buffer, after a reduce-scatter): the global norm is the
    /// square root of the sum over the ranks of each rank's squared norm of its parts,
    /// which `sum_over_ranks` computes in place on a one-element f32 tensor of the device;
    /// only the parts are scaled.
    pub fn clip_norm_of_parts<E>(
        &mut self,
        max_norm: f64,
        parts: &[Range<i64>],
        sum_over_ranks: impl FnOnce(&Tensor) -> Result<(), E>,
    ) -> Result<(), E> {
        self.zero_absent();
        let views: Vec<Tensor> =
            parts.iter().map(|r| self.flat.narrow(0, r.start, r.end - r.start)).collect();
        tch::no_grad(|| {
            let squares = views.iter().map(|v| v.dot(v)).reduce(|a, b| a + b);
            let squares =
                squares.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, self.flat.device())));
            let squares = squares.reshape([1]);
            sum_over_ranks(&squares)?;
            let divisor = self.clip_divisor(max_norm, squares.sqrt());
            for view in &views {
                let _ = view.shallow_clone().g_div_(&divisor);
            }
            Ok(())
        })
    }

    /// `max(norm + 1e-6, max_norm) / max_norm` on the device, for the global `norm`.
    fn clip_divisor(&mut self, max_norm: f64, norm: Tensor) -> Tensor {
        let device = self.flat.device();
        let (_, eps, inverse) = match &self.clip_constants {
            Some(constants) if constants.0 == max_norm => constants,
            // A scalar operand would cost a tensor and a copy at every call; these are made
            // once.
            _ => self.clip_constants.insert((
                max_norm,
                Tensor::from(1e-6f32).to_device(device),
                Tensor::from((1.0 / max_norm) as f32).to_device(device),
            )),
        };
        (norm + eps).clamp_min(max_norm) * inverse
    }

    /// The flat buffer as scratch memory of this layout (f32), its sums forgotten: for
    /// work between optimizer steps that needs a whole f32 buffer for a moment.
    pub fn borrow_buffer(&mut self) -> &Tensor {
        self.clear();
        &self.flat
    }

    /// Forgets the sums: the next backward pass starts them afresh.
    pub fn clear(&mut self) {
        self.present.fill(false);
    }

    /// Zeros the stale part of the buffer of every parameter without a sum.
    fn zero_absent(&mut self) {
        tch::no_grad(|| {
            for (view, _) in self.views.iter().zip(&self.present).filter(|(_, p)| !**p) {
                let _ = view.shallow_clone().zero_();
            }
        });
    }
}

impl coconut_latent::Backprop for Gradients {
    fn backward_and_grads(
        &mut self,
        root: &Tensor,
        others: &[&Tensor],
        keep_graph: bool,
    ) -> Vec<Tensor> {
        Gradients::backward_and_grads(self, root, others, keep_graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coconut_testing::Tolerance;

    #[test]
    fn backward_passes_add_up_and_clipping_bounds_the_norm() {
        let w = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let unused = Tensor::from_slice(&[5.0f32]).set_requires_grad(true);
        let mut grads =
            Gradients::new([("w".to_string(), w.shallow_clone()), ("u".to_string(), unused)]);
        grads.backward(&(&w * &w).sum(Kind::Float)); // 2w
        grads.backward(&w.sum(Kind::Float)); // + 1
        let expected = Tensor::from_slice(&[3.0f32, -3.0]);
        let tol = Tolerance::scaled(1e-6);
        coconut_model::testing::assert_close(grads.get("w").unwrap(), &expected, tol, "sum");
        assert!(grads.get("u").is_none(), "a parameter the loss does not reach has no sum");
        coconut_testing::assert_close(grads.norm(), 18f64.sqrt(), tol, "norm");
        grads.clip_norm(1.0);
        coconut_testing::assert_close(grads.norm(), 1.0, Tolerance::scaled(1e-5), "clipped");
        let clipped = grads.get("w").unwrap().copy();
        grads.clip_norm(2.0); // already within: unchanged
        coconut_model::testing::assert_close(grads.get("w").unwrap(), &clipped, tol, "unclipped");
        grads.clear();
        assert!(grads.is_empty());
        grads.backward(&(&w * &w).sum(Kind::Float)); // 2w
                                                     // Clipped in two parts whose squared norms are summed elsewhere: as clipped whole.
        let mut whole = Gradients::new([("w".to_string(), w.shallow_clone())]);
        whole.backward(&(&w * &w).sum(Kind::Float));
        whole.clip_norm(1.0);
        let parts = [0..2, 2..grads.layout().numel()]; // `u` and w[0], then w[1] and padding
        let mut summed = 0.0;
        grads
            .clip_norm_of_parts(1.0, &parts, |squares| {
                summed = squares.double_value(&[0]);
                Ok::<(), ()>(())
            })
            .unwrap();
        coconut_testing::assert_close(summed, 20.0, tol, "the squared norm of 2w");
        let clipped = grads.get("w").unwrap();
        coconut_model::testing::assert_close(clipped, whole.get("w").unwrap(), tol, "parts");
        grads.clear();
        grads.backward(&w.sum(Kind::Float)); // starts afresh: 1
        let ones = Tensor::from_slice(&[1.0f32, 1.0]);
        coconut_model::testing::assert_close(grads.get("w").unwrap(), &ones, tol, "afresh");
    }
}
