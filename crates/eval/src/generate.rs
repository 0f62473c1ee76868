//! Batched greedy generation after the stage-k evaluation prompt.
//!
//! The reference decodes one sample at a time and recomputes the whole prefix for every
//! new token. Here the prompts go through the latent passes once (the same multi-pass
//! forward as training, which leaves every prompt position in the KV cache), in chunks of
//! similar length, then the whole batch decodes one column per step from the cache. Rows
//! that reach a stop id (the EOS, or any id the model's generation config lists) leave the
//! batch, so finished rows cost nothing.

use std::collections::BTreeMap;

use coconut_curriculum::{collate_prompts, SpecialTokens};
use coconut_latent::{latent_hidden_states, DeviceBatch};
use coconut_model::{causal_bias, padding_bias, CausalLm, KvCache};
use tch::{Device, Kind, Tensor};

/// Prompts per chunk of the prompt phase (see [`generate`]).
const PROMPT_CHUNK_ROWS: usize = 8;

/// The greedy continuation of one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// New tokens, up to and including the stop id when one was produced.
    pub tokens: Vec<u32>,
    /// Whether decoding stopped at a stop id (rather than at `max_new_tokens`).
    pub stopped: bool,
}

/// Greedily continues every prompt, at most `max_new_tokens` tokens each, stopping a row at
/// any of `stop_ids` (`Tokenizer::stop_ids`; none for benchmarks that need a fixed amount
/// of work).
pub fn generate(
    model: &dyn CausalLm,
    prompts: &[Vec<u32>],
    special: &SpecialTokens,
    stop_ids: &[u32],
    max_new_tokens: usize,
    device: Device,
) -> Vec<Generation> {
    // The latent passes need every row's thoughts in the same columns, so prompts with
    // different thought counts are decoded as separate batches.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        groups.entry(p.iter().filter(|&&t| t == special.latent).count()).or_default().push(i);
    }
    if groups.len() > 1 {
        let mut out = vec![None; prompts.len()];
        for rows in groups.values() {
            let group: Vec<Vec<u32>> = rows.iter().map(|&i| prompts[i].clone()).collect();
            for (&i, g) in
                rows.iter().zip(generate(model, &group, special, stop_ids, max_new_tokens, device))
            {
                out[i] = Some(g);
            }
        }
        return out.into_iter().map(|g| g.expect("every prompt is in one group")).collect();
    }
    tch::no_grad(|| {
        let mut decoding = Decoding::after_prompts(model, prompts, special, device);
        // Never decode past the model's last position.
        let max_new_tokens =
            max_new_tokens.min(model.shape().max_positions.saturating_sub(decoding.longest));
        let mut out: Vec<Generation> =
            vec![Generation { tokens: Vec::new(), stopped: false }; prompts.len()];
        for step in 0..max_new_tokens {
            let tokens = decoding.take_next(&mut out, stop_ids, device);
            let Some(tokens) = tokens.filter(|_| step + 1 < max_new_tokens) else { break };
            decoding.advance(model, &tokens);
        }
        out
    })
}

/// The batch of rows still being decoded, all of them one token ahead of the cache.
struct Decoding {
    cache: KvCache,
    /// (B_active, V): the logits of each row's next token.
    logits: Tensor,
    /// (B_active, T_so_far): the attention mask of every position so far.
    mask: Tensor,
    /// (B_active, 1): the position of each row's next token.
    next_pos: Tensor,
    /// Batch row -> prompt index.
    active: Vec<usize>,
    /// The longest prompt.
    longest: usize,
}

impl Decoding {
    /// Runs the prompts' latent passes. The prompt phase runs in chunks of prompts of
    /// similar length (a batch of mixed lengths spends much of its work on padding, and
    /// attention grows with the square of the length); the chunks' caches are then stacked,
    /// left-padded, to decode as one.
    fn after_prompts(
        model: &dyn CausalLm,
        prompts: &[Vec<u32>],
        special: &SpecialTokens,
        device: Device,
    ) -> Self {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| prompts[i].len());
        let (mut caches, mut logits, mut masks, mut positions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for rows in order.chunks(PROMPT_CHUNK_ROWS) {
            let chunk: Vec<Vec<u32>> = rows.iter().map(|&i| prompts[i].clone()).collect();
            let batch = DeviceBatch::new(&collate_prompts(&chunk, special), device, model.kind());
            let mut cache = KvCache::new();
            // Decoding continues from the last column: it is the only hidden state read.
            let t = batch.input_ids.size()[1];
            let hidden = latent_hidden_states(model, &batch, &mut cache, false, t - 1); // (b, 1, C)
            logits.push(model.lm_head(&hidden).squeeze_dim(1)); // (b, V)
            let pad = Tensor::zeros([rows.len() as i64, longest as i64 - t], (Kind::Int64, device));
            masks.push(Tensor::cat(&[&pad, &batch.attention_mask], 1)); // (b, longest)
            positions.push(batch.position_ids.narrow(1, -1, 1) + 1); // (b, 1)
            caches.push(cache);
        }
        Self {
            cache: KvCache::stack_left_padded(&caches),
            logits: Tensor::cat(&logits, 0),
            mask: Tensor::cat(&masks, 0),
            next_pos: Tensor::cat(&positions, 0),
            active: order,
            longest,
        }
    }

    /// Takes each row's greedy next token into `out` and drops the rows that stopped from
    /// everything indexed by batch row. Returns the tokens of the rows left, (B_active, 1),
    /// or `None` when every row has stopped.
    fn take_next(
        &mut self,
        out: &mut [Generation],
        stop_ids: &[u32],
        device: Device,
    ) -> Option<Tensor> {
        let next = self.logits.argmax(-1, false); // (B_active)
        let ids: Vec<i64> = Vec::try_from(&next).expect("token ids");
        let mut keep = Vec::with_capacity(self.active.len());
        for (row, (&prompt, &id)) in self.active.iter().zip(&ids).enumerate() {
            out[prompt].tokens.push(id as u32);
            if stop_ids.contains(&(id as u32)) {
                out[prompt].stopped = true;
            } else {
                keep.push(row as i64);
            }
        }
        let mut tokens = next.unsqueeze(1); // (B_active, 1)
        if keep.len() < self.active.len() {
            if keep.is_empty() {
                return None;
            }
            let rows = Tensor::from_slice(&keep).to_device(device);
            self.cache.index_rows(&rows);
            self.mask = self.mask.index_select(0, &rows);
            self.next_pos = self.next_pos.index_select(0, &rows);
            tokens = tokens.index_select(0, &rows);
            self.active = keep.iter().map(|&r| self.active[r as usize]).collect();
        }
        Some(tokens)
    }

    /// Runs `tokens`, (B_active, 1), through the model: the next logits.
    fn advance(&mut self, model: &dyn CausalLm, tokens: &Tensor) {
        let mask = &self.mask;
        self.mask = Tensor::cat(&[mask, &mask.ones_like().narrow(1, 0, 1)], 1); // (B_active, T+1)
        let bias = padding_bias(&self.mask, model.kind()); // (B_active, 1, 1, T+1)
        let embeds = model.embed(tokens);
        let h = model.forward_embeds(&embeds, &self.next_pos, &bias, Some(&mut self.cache), false);
        self.logits = model.lm_head(&h).squeeze_dim(1);
        self.next_pos += 1;
    }
}

/// Greedy decoding of one prompt the way the reference implementation does it: no cache,
/// every thought and every new token recomputes the whole prefix (and the logits of every
/// position). The baseline that [`generate`] must agree with token for token, and the
/// benchmark's slow side.
pub fn generate_without_cache(
    model: &dyn CausalLm,
    prompt: &[u32],
    special: &SpecialTokens,
    stop_ids: &[u32],
    max_new_tokens: usize,
    device: Device,
) -> Generation {
    tch::no_grad(|| {
        let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
        let mut embeds = model.embed(&Tensor::from_slice(&ids).to_device(device).unsqueeze(0)); // (1, T, C)
        let run = |embeds: &Tensor| {
            let t = embeds.size()[1];
            let pos = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0); // (1, T)
            let bias = causal_bias(&Tensor::ones([1, t], (Kind::Int64, device)), model.kind());
            model.forward_embeds(embeds, &pos, &bias, None, false) // (1, T, C)
        };
        for (col, _) in prompt.iter().enumerate().filter(|(_, &t)| t == special.latent) {
            // The thought at `col` is the last hidden state of the prefix before it.
            let col = col as i64;
            let hidden = run(&embeds.narrow(1, 0, col));
            let rest = embeds.size()[1] - col - 1;
            embeds = Tensor::cat(
                &[
                    embeds.narrow(1, 0, col),
                    hidden.narrow(1, -1, 1),
                    embeds.narrow(1, col + 1, rest),
                ],
                1,
            );
        }
        let mut out = Generation { tokens: Vec::new(), stopped: false };
        for _ in 0..max_new_tokens {
            // Logits at every position, as a plain forward of the reference computes them.
            let logits = model.lm_head(&run(&embeds)); // (1, T, V)
            let next = logits.narrow(1, -1, 1).argmax(-1, false); // (1, 1)
            let id = next.int64_value(&[0, 0]) as u32;
            out.tokens.push(id);
            if stop_ids.contains(&id) {
                out.stopped = true;
                break;
            }
            embeds = Tensor::cat(&[embeds, model.embed(&next)], 1);
        }
        out
    })
}
