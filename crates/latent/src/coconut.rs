//! The Coconut multi-pass forward (Hao et al. 2024, section 3, figure 1).
//!
//! A training sequence at stage k reads
//!
//! ```text
//!   question  <bot>  <latent> <latent> ... <latent>  <eot>  remaining steps  ### answer
//!   [0, f)           f        f+1         f+n-1
//! ```
//!
//! where every `<latent>` is a continuous thought: its input embedding is the last hidden
//! state (after `ln_f`) of the position before it. Thought i therefore exists only once
//! the model has run up to column f+i-1, which gives n+1 sequential passes:
//!
//! ```text
//!   pass 0      columns [0, f)            -> hidden at f-1 becomes thought 0 (column f)
//!   pass i      column  f+i-1  (1 <= i < n) -> hidden at f+i-1 becomes thought i
//!   final pass  columns [f+n-1, T)
//! ```
//!
//! Each pass attends to the keys and values of the earlier passes through the KV cache, so
//! every token is processed once and the whole thing costs about one ordinary forward.
//! Gradients flow through every thought and through the cache (nothing is detached).
//! Collation left-pads rows so the first latent of every row sits in column f; a row with
//! fewer latents than the batch maximum simply keeps its own token embeddings in the later
//! latent columns.
//!
//! With gradient checkpointing ([`training_loss`]) the two long passes, the question (at
//! stage 0 the whole sequence) and the final pass, keep only each block's input and their
//! keys and values: their blocks are recomputed one at a time in the backward pass. They
//! hold nearly every token, so at most one block's activations of them are alive at once,
//! at the price of running them forward twice. The thought passes, a column each, keep
//! theirs.

use std::ops::Range;

use coconut_curriculum::{Batch, IGNORE_INDEX};
use coconut_model::{
    causal_bias, draw_seed, gradient_root, upload, CausalLm, KvCache, Packing, PassInputs,
    RecomputedPass,
};
use tch::{Device, Kind, Tensor};

/// A collated batch on the device, with everything the passes need built once.
#[derive(Debug)]
pub struct DeviceBatch {
    /// (B, T) token ids.
    pub input_ids: Tensor,
    /// (B, T) 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// (B, T) positions over real tokens.
    pub position_ids: Tensor,
    /// (B, 1, T, T) additive causal + padding bias.
    pub bias: Tensor,
    /// Column of the first latent (the same in every row that has latents).
    pub first_latent: i64,
    /// For latent i, a (B, 1, 1) mask of the rows that have no i-th latent (they keep their
    /// own token there).
    pub lacks_latent: Vec<Tensor>,
    /// The first column whose hidden state the loss reads (it predicts a supervised next
    /// token in some row); `T - 1` when nothing is supervised.
    pub outputs_from: i64,
    /// Flat indices into the (B, T - outputs_from) hidden states of the columns whose
    /// next token is supervised.
    pub supervised_positions: Tensor,
    /// The supervised next tokens, aligned with `supervised_positions`.
    pub targets: Tensor,
    /// (B * T) on the host: whether each cell holds a real token (to pack the passes).
    real_tokens: Vec<bool>,
}

impl DeviceBatch {
    /// Moves a collated batch to `device` and precomputes masks and label positions, so
    /// that the pass loop makes no host round trips. `kind` is the model's
    /// ([`CausalLm::kind`]): the attention bias is built in it once.
    pub fn new(batch: &Batch, device: Device, kind: Kind) -> Self {
        let (b, t) = (batch.batch_size as i64, batch.seq_len as i64);
        let tensor = |v: &[i64]| upload(Tensor::from_slice(v).view([b, t]), device);
        let attention_mask = tensor(&batch.attention_mask);
        let n = batch.max_latents();
        let first_latent = batch.first_latent_column().map_or(t, |c| c as i64);
        let lacks_latent = (0..n)
            .map(|i| {
                let rows: Vec<bool> = batch.latent_columns.iter().map(|c| c.len() <= i).collect();
                upload(Tensor::from_slice(&rows).view([b, 1, 1]), device)
            })
            .collect();
        // Column p predicts the label at p+1 (the shift of a causal LM).
        let seq = batch.seq_len;
        let supervised = |row: usize| {
            (0..seq.saturating_sub(1))
                .filter(move |p| batch.labels[row * seq + p + 1] != IGNORE_INDEX)
        };
        let outputs_from = (0..batch.batch_size)
            .filter_map(|row| supervised(row).next())
            .min()
            .unwrap_or(seq.saturating_sub(1));
        let read = seq - outputs_from; // columns of hidden states the loss receives
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for row in 0..batch.batch_size {
            for p in supervised(row) {
                positions.push((row * read + p - outputs_from) as i64);
                targets.push(batch.labels[row * seq + p + 1]);
            }
        }
        Self {
            input_ids: tensor(&batch.input_ids),
            bias: causal_bias(&attention_mask, kind),
            attention_mask,
            position_ids: tensor(&batch.position_ids),
            first_latent,
            lacks_latent,
            outputs_from: outputs_from as i64,
            supervised_positions: upload(Tensor::from_slice(&positions), device),
            targets: upload(Tensor::from_slice(&targets), device),
            real_tokens: batch.attention_mask.iter().map(|&m| m != 0).collect(),
        }
    }

    /// Largest number of latents of a row.
    pub fn max_latents(&self) -> usize {
        self.lacks_latent.len()
    }

    /// Number of supervised tokens.
    pub fn supervised_tokens(&self) -> i64 {
        self.targets.size()[0]
    }
    /// The real tokens of the columns `columns` when at least an eighth of them is padding,
    /// for a pass computing the outputs of its columns from `outputs_from` on: its blocks
    /// then skip the padding (see [`Packing`]). With less padding the saving is small, and
    /// the gathers and scatters around attention are not free (a length-grouped batch, as in
    /// the default run, is left as it is).
    fn packing(&self, columns: &Range<i64>, outputs_from: i64) -> Option<Packing> {
        let (b, t) = self.input_ids.size2().expect("(B, T) ids");
        let (start, len) = (columns.start as usize, width(columns) as usize);
        let real: Vec<bool> = (0..b as usize)
            .flat_map(|row| &self.real_tokens[row * t as usize..][start..start + len])
            .copied()
            .collect();
        let padding = real.iter().filter(|&&r| !r).count();
        (len > 1 && padding * 8 >= real.len()).then(|| {
            Packing::new(&real, b as usize, len, outputs_from as usize, self.input_ids.device())
        })
    }
}

/// The column ranges of the passes: `[0, f)`, then one column per later thought, then the
/// rest. Without latents it is one pass over the whole sequence.
pub fn pass_ranges(first_latent: i64, n_latents: usize, seq_len: i64) -> Vec<(i64, i64)> {
    if n_latents == 0 {
        return vec![(0, seq_len)];
    }
    let f = first_latent;
    let n = n_latents as i64;
    let mut ranges = vec![(0, f)];
    ranges.extend((1..n).map(|i| (f + i - 1, f + i)));
    ranges.push((f + n - 1, seq_len));
    ranges
}

/// Runs the multi-pass forward and returns the last hidden states of columns
/// `[outputs_from, T)`, (B, T - outputs_from, C), with each thought fed back as the input
/// embedding of its latent column. `cache` must be empty; it ends up holding every position
/// (generation continues from it).
///
/// Each pass computes the hidden states of its last column (the next thought) and of the
/// columns the caller reads, and no others (see `forward_pass` on [`CausalLm`]).
pub fn latent_hidden_states(
    model: &dyn CausalLm,
    batch: &DeviceBatch,
    cache: &mut KvCache,
    train: bool,
    outputs_from: i64,
) -> Tensor {
    multi_pass(model, batch, cache, train, outputs_from, false).0
}

/// One pass of the multi-pass forward, planned before any runs.
#[derive(Debug, Clone, PartialEq)]
struct Pass {
    /// The columns it runs; their keys and values join the cache.
    columns: Range<i64>,
    /// The latent whose thought (the previous pass's last hidden state) is spliced into the
    /// pass's first column; none for the first pass.
    thought: Option<usize>,
    /// The columns whose hidden states it computes: those read and, for every pass but the
    /// final one, the last column (its hidden state is the next thought).
    computed: Range<i64>,
    /// The columns whose hidden states the caller reads (empty when none).
    read: Range<i64>,
    /// Whether its blocks are recomputed in the backward pass (gradient checkpointing).
    recomputed: bool,
}

impl Pass {
    /// The hidden states of the read columns among `hidden`, those of the computed ones;
    /// none when the caller reads none of the pass's columns.
    fn read_columns(&self, hidden: &Tensor) -> Option<Tensor> {
        let offset = self.read.start - self.computed.start;
        (!self.read.is_empty()).then(|| hidden.narrow(1, offset, width(&self.read)))
    }
}

/// The passes over the [`pass_ranges`] of a batch, for a caller that reads the hidden
/// states of columns `[outputs_from, seq_len)`. With `recompute`, the two long passes (the
/// first and the final) are recomputed in the backward pass.
fn plan_passes(
    first_latent: i64,
    n_latents: usize,
    seq_len: i64,
    outputs_from: i64,
    recompute: bool,
) -> Vec<Pass> {
    let ranges = pass_ranges(first_latent, n_latents, seq_len);
    let last = ranges.len() - 1;
    let plan = ranges.into_iter().enumerate().map(|(i, (start, end))| {
        let read = outputs_from.clamp(start, end)..end;
        let computed_from = if i < last { read.start.min(end - 1) } else { read.start };
        Pass {
            columns: start..end,
            thought: i.checked_sub(1),
            computed: computed_from..end,
            read,
            recomputed: recompute && (i == 0 || i == last),
        }
    });
    plan.collect()
}

/// [`latent_hidden_states`]; with `recompute`, the first and the final pass run through
/// `forward_recomputed` (on [`CausalLm`]) and are returned, in order, for the backward pass.
fn multi_pass(
    model: &dyn CausalLm,
    batch: &DeviceBatch,
    cache: &mut KvCache,
    train: bool,
    outputs_from: i64,
    recompute: bool,
) -> (Tensor, Vec<RecomputedPass>) {
    let embeds = model.embed(&batch.input_ids); // (B, T, C)
    let t = embeds.size()[1];
    assert!((0..t).contains(&outputs_from), "outputs_from {outputs_from} outside 0..{t}");
    let forward = Forward {
        model,
        batch,
        train,
        position_tables: model.position_tables(&batch.position_ids),
    };
    let mut outputs: Vec<Tensor> = Vec::new();
    let mut thought: Option<Tensor> = None; // (B, 1, C)
    let mut recomputed = Vec::new();
    let plan = plan_passes(batch.first_latent, batch.max_latents(), t, outputs_from, recompute);
    for pass in plan {
        let x = splice_thought(batch, &pass, &embeds, thought.as_ref());
        let hidden = forward.run_pass(&pass, &x, cache, &mut recomputed);
        outputs.extend(pass.read_columns(&hidden));
        thought = Some(hidden.narrow(1, -1, 1));
    }
    let hidden = match outputs.len() {
        1 => outputs.pop().expect("one output"),
        _ => Tensor::cat(&outputs, 1),
    };
    (hidden, recomputed)
}

/// What every pass of one multi-pass forward reads.
struct Forward<'a> {
    model: &'a dyn CausalLm,
    batch: &'a DeviceBatch,
    train: bool,
    /// The model's position tables of the whole batch ([`CausalLm::position_tables`]),
    /// made once: every pass reads its columns of them.
    position_tables: Vec<Tensor>,
}

/// The input embeddings of `pass`'s columns, (B, len, C), with `thought` in its first column
/// in the rows that have that latent. One out-of-place select over rows keeps autograd
/// intact (an in-place write would break it).
fn splice_thought(
    batch: &DeviceBatch,
    pass: &Pass,
    embeds: &Tensor,
    thought: Option<&Tensor>,
) -> Tensor {
    let x = embeds.narrow(1, pass.columns.start, width(&pass.columns));
    let (Some(latent), Some(thought)) = (pass.thought, thought) else { return x };
    let first = x.narrow(1, 0, 1).where_self(&batch.lacks_latent[latent], thought);
    match width(&pass.columns) {
        1 => first,
        len => Tensor::cat(&[first, x.narrow(1, 1, len - 1)], 1),
    }
}

impl Forward<'_> {
    /// Runs `pass` over its input embeddings `x`, attending to the earlier passes through
    /// `cache` (which then holds its keys and values too), and returns the hidden states of
    /// its computed columns, (B, computed, C). A recomputed pass is kept in `recomputed`.
    fn run_pass(
        &self,
        pass: &Pass,
        x: &Tensor,
        cache: &mut KvCache,
        recomputed: &mut Vec<RecomputedPass>,
    ) -> Tensor {
        let (start, len) = (pass.columns.start, width(&pass.columns));
        // Queries [start, end) see keys [0, end): the cache holds [0, start).
        let bias = self.batch.bias.narrow(2, start, len).narrow(3, 0, pass.columns.end);
        let pos = self.batch.position_ids.narrow(1, start, len);
        let tables = self.position_tables.iter().map(|t| t.narrow(1, start, len)).collect();
        let outputs_from = pass.computed.start - start;
        let packing = self.batch.packing(&pass.columns, outputs_from);
        let inputs = PassInputs::new(&pos, &bias, self.train)
            .outputs_from(outputs_from)
            .packed(packing.as_ref())
            .with_position_tables(tables);
        if pass.recomputed {
            let (hidden, kept) = self.model.forward_recomputed(x, &inputs, cache);
            recomputed.push(kept);
            hidden
        } else {
            self.model.forward_pass(x, &inputs, Some(cache))
        }
    }
}

/// The number of columns of `range`.
fn width(range: &Range<i64>) -> i64 {
    range.end - range.start
}

/// The Coconut loss: cross-entropy of the next token, averaged over the supervised tokens
/// of the whole batch.
///
/// Logits are computed only at positions whose next token is supervised. That gives the
/// same loss and gradients as logits over every position with `ignore_index = -100`, at a
/// fraction of the cost: with a 50k vocabulary the LM head dominates a small model, and at
/// late stages only a few percent of the positions carry a label. For the same reason the
/// last block runs only from the first column the loss reads.
pub fn coconut_loss(model: &dyn CausalLm, batch: &DeviceBatch, train: bool) -> Tensor {
    let hidden = latent_hidden_states(model, batch, &mut KvCache::new(), train, batch.outputs_from);
    loss_on_supervised_columns(model, batch, &hidden)
}

/// Where a backward pass sends its gradients: the trainer's gradient accumulator
/// (`coconut_trainer::gradients::Gradients`), or anything that sums parameter gradients.
pub trait Backprop {
    /// Backpropagates `root`, adds the parameters' gradients to the sums, and returns the
    /// gradients of `others` (tensors of the graph that are not parameters; undefined where
    /// `root` does not reach one). With `keep_graph` the graph can be walked again.
    fn backward_and_grads(
        &mut self,
        root: &Tensor,
        others: &[&Tensor],
        keep_graph: bool,
    ) -> Vec<Tensor>;
}

/// The loss of a training batch (dropout on), ready for its backward pass.
#[derive(Debug)]
pub struct TrainingLoss {
    /// The mean cross-entropy over the supervised tokens.
    pub value: Tensor,
    /// With gradient checkpointing, the passes recomputed in the backward pass, in order.
    recomputed: Vec<RecomputedPass>,
}

/// [`coconut_loss`] in training mode, with the long passes' activations recomputed in the
/// backward pass when `gradient_checkpointing` is set. Loss and gradients are the same
/// either way.
pub fn training_loss(
    model: &dyn CausalLm,
    batch: &DeviceBatch,
    gradient_checkpointing: bool,
) -> TrainingLoss {
    let mut cache = KvCache::new();
    let (hidden, recomputed) =
        multi_pass(model, batch, &mut cache, true, batch.outputs_from, gradient_checkpointing);
    TrainingLoss { value: loss_on_supervised_columns(model, batch, &hidden), recomputed }
}

impl TrainingLoss {
    /// Adds the parameter gradients of `weight * loss` to `grads`.
    ///
    /// With gradient checkpointing the backward pass walks the recomputed passes from the
    /// last to the first. From the current root (first the loss) it runs down to the outputs
    /// of that pass and of those before it (the graph in between may read any of them),
    /// recomputes the pass block by block, and continues from the pass's inputs (its
    /// embeddings, with the thought written in, and the earlier keys and values it read) as
    /// the next root. The graph outside the recomputed passes is kept until its last root has
    /// been walked; each root and each pass is dropped as soon as it is done with.
    ///
    /// Recomputation reseeds torch for dropout, so either way the backward pass ends by
    /// seeding torch from a seed drawn at its start: what runs next (the next micro-batch)
    /// draws the same masks with and without checkpointing.
    pub fn backward(self, model: &dyn CausalLm, grads: &mut dyn Backprop, weight: f64) {
        let continuation = draw_seed();
        let TrainingLoss { value, mut recomputed } = self;
        let mut root = Some(&value * weight);
        drop(value);
        let mut output_grads: Vec<Vec<Tensor>> = recomputed
            .iter()
            .map(|pass| pass.outputs().iter().map(|_| Tensor::new()).collect())
            .collect();
        while let Some(pass) = recomputed.pop() {
            if let Some(root) = root.take() {
                let outputs: Vec<&Tensor> =
                    recomputed.iter().chain([&pass]).flat_map(RecomputedPass::outputs).collect();
                let mut found = grads.backward_and_grads(&root, &outputs, true).into_iter();
                for sum in output_grads.iter_mut().flatten() {
                    add_gradient(sum, found.next().expect("one gradient per output"));
                }
            }
            let pass_grads = output_grads.pop().expect("one set of gradients per pass");
            let input_grads = pass.backward(model, &pass_grads, |scalar, inputs| {
                grads.backward_and_grads(scalar, inputs, false)
            });
            root = gradient_root(pass.inputs().into_iter().zip(&input_grads));
        }
        if let Some(root) = root {
            grads.backward_and_grads(&root, &[], false);
        }
        tch::manual_seed(continuation);
    }
}

/// `sum += g`, where an undefined tensor is zero.
fn add_gradient(sum: &mut Tensor, g: Tensor) {
    if g.defined() {
        *sum = if sum.defined() { &*sum + g } else { g };
    }
}

/// Cross-entropy of the next token at the supervised columns of `hidden`, the hidden
/// states of columns `[outputs_from, T)`.
fn loss_on_supervised_columns(
    model: &dyn CausalLm,
    batch: &DeviceBatch,
    hidden: &Tensor,
) -> Tensor {
    let (b, read, c) = hidden.size3().expect("(B, T', C)");
    let flat = hidden.reshape([b * read, c]); // (B*T', C)
    let selected = flat.index_select(0, &batch.supervised_positions); // (N, C)
    let logits = model.lm_head(&selected).to_kind(Kind::Float); // (N, V)
    logits.cross_entropy_for_logits(&batch.targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_computes_what_is_read_and_its_last_column() {
        // Thoughts at columns 5, 6 and 7 of 20; the caller reads [8, 20).
        let plan = plan_passes(5, 3, 20, 8, true);
        let pass = |columns: Range<i64>, thought, computed, read, recomputed| Pass {
            columns,
            thought,
            computed,
            read,
            recomputed,
        };
        assert_eq!(
            plan,
            [
                pass(0..5, None, 4..5, 5..5, true),
                pass(5..6, Some(0), 5..6, 6..6, false),
                pass(6..7, Some(1), 6..7, 7..7, false),
                pass(7..20, Some(2), 8..20, 8..20, true),
            ]
        );
        // Reading everything: each pass computes all its columns; one pass without latents.
        let plan = plan_passes(5, 1, 20, 0, false);
        assert_eq!(
            plan,
            [pass(0..5, None, 0..5, 0..5, false), pass(5..20, Some(0), 5..20, 5..20, false)]
        );
        assert_eq!(plan_passes(5, 0, 20, 19, false), [pass(0..20, None, 19..20, 19..20, false)]);
    }
}
