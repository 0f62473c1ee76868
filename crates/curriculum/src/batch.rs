//! Batching: padding that lines up the continuous thoughts of every row, and index batches
//! for each epoch (docs/DESIGN.md, "Batching").
//!
//! The multi-pass forward runs one pass per latent column for the whole batch, so latent i of
//! every row must sit in the same column. Rows are left-padded until their first latents
//! line up; because each row's latents are contiguous, all later latents line up too.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::curriculum::{StagedSample, IGNORE_INDEX};
use crate::tokenizer::SpecialTokens;

/// A padded batch, every tensor row-major `batch_size * seq_len`, ready for `Tensor::from_slice`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Rows.
    pub batch_size: usize,
    /// Columns, the same for every row.
    pub seq_len: usize,
    /// Token ids; padding holds the pad id ([`SpecialTokens::pad`]).
    pub input_ids: Vec<i64>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<i64>,
    /// 0, 1, 2, .. over the real tokens of each row, from its first real token; 0 on padding.
    pub position_ids: Vec<i64>,
    /// Unshifted labels: the token's own id where supervised, -100 elsewhere and on padding.
    pub labels: Vec<i64>,
    /// Per row, the column of each of its `<|latent|>` tokens, in order.
    pub latent_columns: Vec<Vec<usize>>,
}

impl Batch {
    /// The largest number of latents in one row: the number of thought passes the batch needs.
    pub fn max_latents(&self) -> usize {
        self.latent_columns.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The number of labels the loss counts (not -100), before the trainer's one-token shift.
    pub fn supervised_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// The earliest latent column of the batch, where the first pass stops; `None` without
    /// latents. In a training batch every row with latents has its first one there.
    pub fn first_latent_column(&self) -> Option<usize> {
        self.latent_columns.iter().filter_map(|c| c.first()).min().copied()
    }
}

/// Pads staged samples into one training batch: rows with latents are left-padded so that
/// their first latents share a column (the latest first-latent index among them), rows
/// without latents are not left-padded, and then every row is right-padded to the longest.
/// Padding has the pad id, attention mask 0, position id 0 and label -100.
pub fn collate_training(samples: &[StagedSample], special: &SpecialTokens) -> Batch {
    let first_latent: Vec<Option<usize>> =
        samples.iter().map(|s| s.input_ids.iter().position(|&id| id == special.latent)).collect();
    let align = first_latent.iter().flatten().max().copied().unwrap_or(0);
    let rows: Vec<Row> = samples
        .iter()
        .zip(&first_latent)
        .map(|(s, first)| Row {
            left_pad: first.map_or(0, |f| align - f),
            ids: &s.input_ids,
            labels: Some(&s.labels),
        })
        .collect();
    assemble(&rows, special)
}

/// Pads generation prompts into one batch: each prompt is left-padded so that all of them end
/// in the last column, where decoding continues. Labels are all -100.
pub fn collate_prompts(prompts: &[Vec<u32>], special: &SpecialTokens) -> Batch {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let rows: Vec<Row> =
        prompts.iter().map(|p| Row { left_pad: longest - p.len(), ids: p, labels: None }).collect();
    assemble(&rows, special)
}

/// The sample indices of each batch of one epoch, in order; the last batch may be smaller.
///
/// With a seed, the indices are shuffled by a generator seeded from the seed mixed with the
/// epoch, so every epoch has its own order and a rerun gets the same ones. (`StdRng` is only
/// reproducible within one version of `rand`.)
///
/// # Panics
/// If `batch_size` is 0.
pub fn batches(
    n_samples: usize,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    epoch: usize,
) -> Vec<Vec<usize>> {
    assert!(batch_size > 0, "batch_size must be at least 1");
    let mut order: Vec<usize> = (0..n_samples).collect();
    if let Some(seed) = shuffle_seed {
        // The golden-ratio constant spreads consecutive epochs far apart in seed space.
        let mixed = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        order.shuffle(&mut StdRng::seed_from_u64(mixed));
    }
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// Batches of one epoch whose rows have similar lengths, so that little of a batch is
/// padding (the `group_by_length` of other trainers).
///
/// `shape[i]` is sample i's (columns before its first latent, columns from there on): the
/// two amounts a training batch pads (on the left to line up the latents, on the right to
/// the longest). The epoch's shuffled order is cut into windows of
/// [`LENGTH_GROUP_WINDOW`] batches; each window is sorted by shape and cut into batches, and
/// the batches of the whole epoch are shuffled again. Every index appears once; with the
/// same seed and epoch the result is the same.
pub fn length_grouped_batches(
    shape: &[(usize, usize)],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    assert!(batch_size > 0, "batch_size must be at least 1");
    let order: Vec<usize> = batches(shape.len(), batch_size, Some(seed), epoch).concat();
    let mut grouped: Vec<Vec<usize>> = Vec::with_capacity(order.len().div_ceil(batch_size));
    for window in order.chunks(batch_size * LENGTH_GROUP_WINDOW) {
        let mut window = window.to_vec();
        window.sort_by_key(|&i| shape[i]); // stable: ties keep the shuffled order
        grouped.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
    }
    // Without this, batches of one window would come in length order.
    let mixed = !seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    grouped.shuffle(&mut StdRng::seed_from_u64(mixed));
    grouped
}

/// Batches per sorting window of [`length_grouped_batches`]: large enough that neighbours
/// in a window have close lengths, small enough that a batch is still a random draw.
pub const LENGTH_GROUP_WINDOW: usize = 50;

/// One row before padding: `left_pad` pads, then `ids`, then right padding.
struct Row<'a> {
    left_pad: usize,
    ids: &'a [u32],
    labels: Option<&'a [i64]>,
}

fn assemble(rows: &[Row], special: &SpecialTokens) -> Batch {
    let seq_len = rows.iter().map(|r| r.left_pad + r.ids.len()).max().unwrap_or(0);
    let n = rows.len() * seq_len;
    let mut batch = Batch {
        batch_size: rows.len(),
        seq_len,
        input_ids: vec![i64::from(special.pad); n],
        attention_mask: vec![0; n],
        position_ids: vec![0; n],
        labels: vec![IGNORE_INDEX; n],
        latent_columns: Vec::with_capacity(rows.len()),
    };
    for (r, row) in rows.iter().enumerate() {
        let start = r * seq_len + row.left_pad;
        let mut latents = Vec::new();
        for (pos, &id) in row.ids.iter().enumerate() {
            let at = start + pos;
            batch.input_ids[at] = i64::from(id);
            batch.attention_mask[at] = 1;
            batch.position_ids[at] = pos as i64;
            batch.labels[at] = row.labels.map_or(IGNORE_INDEX, |l| l[pos]);
            if id == special.latent {
                latents.push(row.left_pad + pos);
            }
        }
        batch.latent_columns.push(latents);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curriculum::{
        eval_prompt, tokenize_samples, training_sample, CurriculumConfig, TokenizedSample,
    };
    use crate::data::load_samples;
    use crate::tokenizer::{tests::gpt2, END_LATENT, EOS, LATENT, START_LATENT};
    use std::path::Path;

    const SP: SpecialTokens = SpecialTokens {
        bos: None,
        eos: 0,
        pad: 0,
        start_latent: 1,
        end_latent: 2,
        latent: 3,
        pause: 4,
    };

    fn tokenized(question_len: usize, n_steps: usize) -> TokenizedSample {
        TokenizedSample {
            question: (0..question_len as u32).map(|i| 100 + i).collect(),
            steps: (0..n_steps as u32).map(|i| vec![200 + i, 250 + i]).collect(),
            answer: vec![30, 0],
        }
    }

    fn row<T: Copy>(b: &Batch, v: &[T], r: usize) -> Vec<T> {
        v[r * b.seq_len..(r + 1) * b.seq_len].to_vec()
    }

    #[test]
    fn first_latents_line_up_across_question_lengths() {
        let cfg = CurriculumConfig { c_thought: 2, max_latent_stage: 3, ..Default::default() };
        let staged = [
            training_sample(&cfg, &SP, &tokenized(2, 3), 1), // 2 latents, first at 3
            training_sample(&cfg, &SP, &tokenized(5, 3), 3), // 6 latents, first at 6
            training_sample(&cfg, &SP, &tokenized(4, 1), 4), // final: 2 latents, first at 5
        ];
        let b = collate_training(&staged, &SP);
        assert_eq!(b.latent_columns[0], [6, 7]);
        assert_eq!(b.latent_columns[1], [6, 7, 8, 9, 10, 11]);
        assert_eq!(b.latent_columns[2], [6, 7]);
        assert_eq!(b.max_latents(), 6);
        assert_eq!(b.first_latent_column(), Some(6));
        // Latent i of every row that has it shares one column.
        for i in 0..b.max_latents() {
            let cols: Vec<_> = b.latent_columns.iter().filter_map(|c| c.get(i)).collect();
            assert!(cols.windows(2).all(|w| w[0] == w[1]), "latent {i}: {cols:?}");
        }
        for (r, s) in staged.iter().enumerate() {
            let left = [3, 0, 1][r];
            let ids = row(&b, &b.input_ids, r);
            let mask = row(&b, &b.attention_mask, r);
            let pos = row(&b, &b.position_ids, r);
            let labels = row(&b, &b.labels, r);
            let real = left..left + s.input_ids.len();
            for c in 0..b.seq_len {
                if real.contains(&c) {
                    assert_eq!(ids[c], i64::from(s.input_ids[c - left]));
                    assert_eq!(labels[c], s.labels[c - left]);
                    assert_eq!((mask[c], pos[c]), (1, (c - left) as i64));
                } else {
                    // Left and right padding alike.
                    assert_eq!((ids[c], mask[c], pos[c], labels[c]), (0, 0, 0, -100));
                }
            }
            assert_eq!(b.latent_columns[r].len(), s.n_latents);
        }
        // Rows 0 and 1 are longest: 3 + 2 + 1 + 2 + 1 + 4 + 2 and 5 + 1 + 6 + 1 + 2.
        assert_eq!(b.seq_len, 15);
    }

    #[test]
    fn rows_without_latents_get_no_left_padding() {
        let cfg = CurriculumConfig::default();
        let staged = [
            training_sample(&cfg, &SP, &tokenized(2, 3), 0), // no latents
            training_sample(&cfg, &SP, &tokenized(2, 3), 2),
            training_sample(&cfg, &SP, &tokenized(6, 3), 1),
        ];
        let b = collate_training(&staged, &SP);
        assert_eq!(row(&b, &b.input_ids, 0)[..4], [100, 101, 1, 2]);
        assert_eq!(b.latent_columns, [vec![], vec![7, 8], vec![7]]);
        assert_eq!(row(&b, &b.attention_mask, 1)[..5], [0, 0, 0, 0, 1]);
        let supervised: usize =
            staged.iter().map(|s| s.labels.iter().filter(|&&l| l != -100).count()).sum();
        assert_eq!(b.supervised_tokens(), supervised);
        assert_eq!(supervised, 8 + 4 + 6);

        // Without any latent, collation is plain right padding.
        let b = collate_training(&staged[..1], &SP);
        assert_eq!(b.seq_len, staged[0].input_ids.len());
        assert_eq!(b.max_latents(), 0);
        assert_eq!(b.first_latent_column(), None);
    }

    #[test]
    fn padding_holds_the_pad_id_not_the_eos() {
        let special = SpecialTokens { pad: 7, ..SP };
        let staged = [
            training_sample(&CurriculumConfig::default(), &special, &tokenized(2, 3), 0),
            training_sample(&CurriculumConfig::default(), &special, &tokenized(5, 3), 1),
        ];
        let b = collate_training(&staged, &special);
        assert!(b.attention_mask.contains(&0));
        for r in 0..2 {
            let (ids, mask) = (row(&b, &b.input_ids, r), row(&b, &b.attention_mask, r));
            for (id, m) in ids.iter().zip(&mask) {
                assert!(*m == 1 || *id == 7, "row {r}: {ids:?}");
            }
        }
        let b = collate_prompts(&[vec![100], vec![100, 101, 102]], &special);
        assert_eq!(row(&b, &b.input_ids, 0), [7, 7, 100]);
    }

    #[test]
    fn prompts_are_left_padded_to_end_together() {
        let cfg = CurriculumConfig { c_thought: 2, ..Default::default() };
        let prompts: Vec<_> =
            [2, 5].into_iter().map(|q| eval_prompt(&cfg, &SP, &tokenized(q, 3), 1)).collect();
        let b = collate_prompts(&prompts, &SP);
        assert_eq!(b.seq_len, 9);
        assert_eq!(row(&b, &b.input_ids, 0), [0, 0, 0, 100, 101, 1, 3, 3, 2]);
        assert_eq!(row(&b, &b.attention_mask, 0), [0, 0, 0, 1, 1, 1, 1, 1, 1]);
        assert_eq!(row(&b, &b.position_ids, 0), [0, 0, 0, 0, 1, 2, 3, 4, 5]);
        assert_eq!(row(&b, &b.position_ids, 1), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b.latent_columns, [vec![6, 7], vec![6, 7]]);
        assert_eq!(b.supervised_tokens(), 0);
        assert!(b.labels.iter().all(|&l| l == -100));
    }

    #[test]
    fn length_grouped_batches_cover_every_index_and_cut_padding() {
        // Question lengths 10..60 and answer lengths 5..25, in no particular order.
        let shape: Vec<(usize, usize)> =
            (0..1000).map(|i| (10 + (i * 37) % 50, 5 + (i * 11) % 20)).collect();
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| {
                    let left = b.iter().map(|&i| shape[i].0).max().unwrap();
                    let right = b.iter().map(|&i| shape[i].1).max().unwrap();
                    b.len() * (left + right)
                })
                .sum()
        };
        let grouped = length_grouped_batches(&shape, 16, 7, 2);
        let mut all: Vec<usize> = grouped.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(grouped.iter().filter(|b| b.len() != 16).count(), 1); // 1000 = 62 * 16 + 8
        let plain = batches(1000, 16, Some(7), 2);
        let real: usize = shape.iter().map(|(a, b)| a + b).sum();
        let (grouped_pad, plain_pad) = (padded(&grouped) - real, padded(&plain) - real);
        assert!(grouped_pad * 3 < plain_pad, "padding {grouped_pad} vs {plain_pad} ungrouped");
        assert_eq!(grouped, length_grouped_batches(&shape, 16, 7, 2));
        assert_ne!(grouped, length_grouped_batches(&shape, 16, 7, 3));
    }

    #[test]
    fn batches_cover_every_index_once_and_shuffle_per_epoch() {
        let plain = batches(10, 4, None, 3);
        assert_eq!(plain, [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);

        let e0 = batches(100, 32, Some(42), 0);
        assert_eq!(e0.iter().map(Vec::len).collect::<Vec<_>>(), [32, 32, 32, 4]);
        let mut all: Vec<usize> = e0.concat();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(e0, batches(100, 32, Some(42), 0));
        assert_ne!(e0, batches(100, 32, Some(42), 1));
        assert_ne!(e0, batches(100, 32, Some(43), 0));
        assert_ne!(e0.concat(), (0..100).collect::<Vec<_>>());
        assert!(batches(0, 8, Some(1), 0).is_empty());
    }

    /// The end-to-end check: real ProsQA samples, the real GPT-2 tokenizer, stage 2.
    #[test]
    fn prosqa_stage_2_batch_decodes_to_the_expected_text() {
        let tok = gpt2();
        let special = tok.special();
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/datasets/prosqa/prosqa_valid.json"
        ));
        let samples = load_samples(path).unwrap();
        let samples = &samples[..4];
        let tokenized = tokenize_samples(&tok, samples);
        let cfg = CurriculumConfig::default();
        let staged: Vec<_> =
            tokenized.iter().map(|t| training_sample(&cfg, &special, t, 2)).collect();
        let b = collate_training(&staged, &special);
        assert_eq!(b.batch_size, 4);

        let first = b.first_latent_column().unwrap();
        for (r, s) in samples.iter().enumerate() {
            let ids: Vec<u32> = (0..b.seq_len)
                .filter(|&c| b.attention_mask[r * b.seq_len + c] == 1)
                .map(|c| b.input_ids[r * b.seq_len + c] as u32)
                .collect();
            let rest: String = s.steps[2..].iter().map(|st| format!("{st}\n")).collect();
            let expected = format!(
                "{}\n{START_LATENT}{LATENT}{LATENT}{END_LATENT}{rest}### {}{EOS}",
                s.question, s.answer
            );
            assert_eq!(tok.decode(&ids), expected);
            assert_eq!(b.latent_columns[r], [first, first + 1]);
            // Supervision starts right after the end-latent marker.
            let labels = &b.labels[r * b.seq_len..(r + 1) * b.seq_len];
            let end = first + 2;
            assert_eq!(b.input_ids[r * b.seq_len + end], i64::from(special.end_latent));
            assert!(labels[..=end].iter().all(|&l| l == -100));
            assert_eq!(labels[end + 1], b.input_ids[r * b.seq_len + end + 1]);
        }
    }
}
