//! Samples and batches shared by the trainer's test binaries.

use coconut_curriculum::{
    collate_training, training_sample, Batch, CurriculumConfig, Mode, SpecialTokens,
    TokenizedSample,
};

/// Two of our own paths through the same arithmetic differ only in summation order.
#[allow(dead_code)] // not every test binary compares floats
pub const SAME: coconut_testing::Tolerance = coconut_testing::Tolerance::scaled(1e-5);

pub const SPECIAL: SpecialTokens = SpecialTokens {
    bos: None,
    eos: 0,
    pad: 0,
    start_latent: 40,
    end_latent: 41,
    latent: 42,
    pause: 43,
};

/// Samples with different question lengths and numbers of steps.
pub fn samples() -> Vec<TokenizedSample> {
    let ids = |start: u32, n: u32| (start..start + n).map(|i| 1 + i % 38).collect::<Vec<u32>>();
    vec![
        TokenizedSample {
            question: ids(0, 5),
            steps: vec![ids(5, 3), ids(8, 2), ids(10, 4)],
            answer: [ids(14, 2), vec![0]].concat(),
        },
        TokenizedSample {
            question: ids(3, 9),
            steps: vec![ids(20, 2)],
            answer: [ids(22, 3), vec![0]].concat(),
        },
        TokenizedSample {
            question: ids(7, 2),
            steps: vec![ids(1, 2), ids(30, 3)],
            answer: [ids(9, 1), vec![0]].concat(),
        },
    ]
}

/// A batch whose rows have 3, 1 and 2 latents (stage 3, no padding to the maximum) and
/// questions of 5, 9 and 2 tokens.
pub fn latent_batch() -> Batch {
    let config = CurriculumConfig {
        mode: Mode::Coconut,
        max_latent_stage: 3,
        ..CurriculumConfig::default()
    };
    let staged: Vec<_> =
        samples().iter().map(|s| training_sample(&config, &SPECIAL, s, 4)).collect();
    let batch = collate_training(&staged, &SPECIAL);
    assert_eq!(batch.latent_columns.iter().map(Vec::len).collect::<Vec<_>>(), [3, 1, 2]);
    batch
}
