//! The stage-k curriculum: which steps a sample keeps, how many continuous thoughts replace
//! the rest, and the labels (docs/DESIGN.md, "Curriculum").
//!
//! All functions here are pure: a tokenized sample and a stage in, token ids out.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Sample;
use crate::error::CurriculumError;
use crate::tokenizer::{SpecialTokens, Tokenizer};

/// The label of a position the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// What a training sample holds between the question and the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The method: at stage k the first k steps become k * c continuous thoughts, between
    /// start/end-latent markers.
    Coconut,
    /// Chain of thought: question, every step, answer; no markers, no curriculum.
    Cot,
    /// Question then answer.
    NoCot,
    /// "w/o thought": the curriculum removes steps, but nothing replaces them (no latents,
    /// no markers).
    NoThoughts,
    /// The coconut layout with a learned `<pause>` token in each latent slot.
    PauseAsThought,
    /// `max_thoughts()` pause tokens between question and answer; no steps, no curriculum.
    PauseToken,
    /// Coconut trained on the final stage from the first epoch.
    NoCurriculum,
}

/// The curriculum settings; defaults are the paper's ProsQA/ProntoQA ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurriculumConfig {
    /// What replaces the reasoning steps.
    pub mode: Mode,
    /// Continuous thoughts per removed step (the paper's c; more than 2 is unstable). At
    /// least 1, except in `cot`, `no-cot` and `no-thoughts`, which place no thought and take 0.
    pub c_thought: usize,
    /// The last stage that removes a fixed number of steps; past it every step is removed.
    pub max_latent_stage: usize,
    /// Epochs spent at each stage.
    pub epochs_per_stage: usize,
    /// Past the last stage, use `max_latent_stage` thoughts even for samples with fewer steps.
    pub pad_latent_to_max: bool,
    /// Probability that a sample draws its stage uniformly from 0..=len(steps) instead.
    pub uniform_prob: f64,
}

impl Default for CurriculumConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Coconut,
            c_thought: 1,
            max_latent_stage: 6,
            epochs_per_stage: 5,
            pad_latent_to_max: false,
            uniform_prob: 0.0,
        }
    }
}

impl CurriculumConfig {
    /// Checks the values the functions below rely on.
    pub fn validate(&self) -> Result<(), CurriculumError> {
        // `cot`, `no-cot` and `no-thoughts` never place a thought, so they ignore c_thought
        // and accept 0 (the reference's CoT config says 0); the other modes would place none.
        let uses_c_thought = !matches!(self.mode, Mode::Cot | Mode::NoCot | Mode::NoThoughts);
        if uses_c_thought && self.c_thought < 1 {
            return Err(CurriculumError::Config {
                field: "curriculum.c_thought",
                reason: "must be at least 1 where the mode places thoughts or pauses (only \
                         cot, no-cot and no-thoughts accept 0)"
                    .into(),
            });
        }
        if self.epochs_per_stage < 1 {
            return Err(CurriculumError::Config {
                field: "curriculum.epochs_per_stage",
                reason: "must be at least 1".into(),
            });
        }
        // Written as a negated range check so that NaN is rejected too.
        if !(0.0..=1.0).contains(&self.uniform_prob) {
            return Err(CurriculumError::Config {
                field: "curriculum.uniform_prob",
                reason: format!("{} is not a probability in [0, 1]", self.uniform_prob),
            });
        }
        Ok(())
    }

    /// The stage trained at (0-based) `epoch`: `epoch / epochs_per_stage` for the curriculum
    /// modes, 0 for `cot`, `no-cot` and `pause-token`, and the final stage
    /// `max_latent_stage + 1` from the first epoch for `no-curriculum`.
    pub fn stage_of_epoch(&self, epoch: usize) -> usize {
        match self.mode {
            Mode::Cot | Mode::NoCot | Mode::PauseToken => 0,
            _ => self.effective_stage(epoch / self.epochs_per_stage.max(1)),
        }
    }

    /// The stage a sample is trained and evaluated at when `stage` is asked for:
    /// `no-curriculum` always uses the final stage `max_latent_stage + 1`, whatever the
    /// epoch says; the other modes use `stage`.
    pub fn effective_stage(&self, stage: usize) -> usize {
        match self.mode {
            Mode::NoCurriculum => self.max_latent_stage + 1,
            _ => stage,
        }
    }

    /// How many of a sample's `n_steps` reasoning steps its stage-`stage` training sequence
    /// drops (replaced by thoughts, or simply left out): none for `cot`, all for `no-cot`
    /// and `pause-token`, the first `stage` (all past `max_latent_stage`) otherwise.
    pub fn steps_removed(&self, stage: usize, n_steps: usize) -> usize {
        match self.mode {
            Mode::Cot => 0,
            Mode::NoCot | Mode::PauseToken => n_steps,
            _ => schedule(self, self.effective_stage(stage), n_steps).0,
        }
    }

    /// The number of thoughts at the final stage, `max_latent_stage * c_thought`; also the
    /// number of pause tokens of the `pause-token` baseline.
    pub fn max_thoughts(&self) -> usize {
        self.max_latent_stage * self.c_thought
    }
}

/// A sample as token ids, every part encoded on its own so that steps can be dropped.
#[derive(Debug, Clone)]
pub struct TokenizedSample {
    /// `[bos] + enc(question + "\n")` ([`Tokenizer::encode_question`]; no BOS for a model
    /// without one): every sequence starts with the question, so it alone carries the BOS.
    pub question: Vec<u32>,
    /// `enc(step_i + "\n")` for each step (never a BOS).
    pub steps: Vec<Vec<u32>>,
    /// `enc("### " + answer) + [eos]`.
    pub answer: Vec<u32>,
}

/// Tokenizes every sample (in parallel, order preserved). The question starts with the
/// model's BOS when it has one; the steps and the answer never carry it, so a sequence has it
/// once, at its start, whatever steps the curriculum drops.
pub fn tokenize_samples(tok: &Tokenizer, samples: &[Sample]) -> Vec<TokenizedSample> {
    let eos = tok.special().eos;
    samples
        .par_iter()
        .map(|s| {
            let mut answer = tok.encode(&format!("### {}", s.answer));
            answer.push(eos);
            TokenizedSample {
                question: tok.encode_question(&s.question),
                steps: s.steps.iter().map(|st| tok.encode(&format!("{st}\n"))).collect(),
                answer,
            }
        })
        .collect()
}

/// One training sequence and its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedSample {
    /// The token ids, latent slots included.
    pub input_ids: Vec<u32>,
    /// Per position: [`IGNORE_INDEX`] on the question, markers and latent/pause slots, the
    /// position's own id afterwards (the trainer shifts labels by one).
    pub labels: Vec<i64>,
    /// The number of `<|latent|>` ids: the hidden-state passes this sample needs. Zero in the
    /// pause modes, whose pause tokens are ordinary embeddings.
    pub n_latents: usize,
}

/// The training sequence of `sample` at curriculum stage `stage` (after [`sample_stage`]).
///
/// `cot`, `no-cot` and `pause-token` ignore `stage`; `no-curriculum` always uses the final
/// stage `max_latent_stage + 1`.
pub fn training_sample(
    cfg: &CurriculumConfig,
    special: &SpecialTokens,
    sample: &TokenizedSample,
    stage: usize,
) -> StagedSample {
    let (prefix, kept_steps): (Vec<u32>, &[Vec<u32>]) = match cfg.mode {
        Mode::Cot => (sample.question.clone(), &sample.steps),
        Mode::NoCot => (sample.question.clone(), &[]),
        Mode::PauseToken => {
            (slotted(&sample.question, None, special.pause, cfg.max_thoughts()), &[])
        }
        Mode::Coconut | Mode::NoCurriculum | Mode::NoThoughts | Mode::PauseAsThought => {
            let stage = cfg.effective_stage(stage);
            let (skipped, thoughts) = schedule(cfg, stage, sample.steps.len());
            let prefix = match cfg.mode {
                Mode::NoThoughts => sample.question.clone(),
                Mode::PauseAsThought => {
                    slotted(&sample.question, Some(special), special.pause, thoughts)
                }
                _ => slotted(&sample.question, Some(special), special.latent, thoughts),
            };
            (prefix, &sample.steps[skipped..])
        }
    };

    // Everything up to the last slot (or end-latent marker) is given, not predicted.
    let mut labels = vec![IGNORE_INDEX; prefix.len()];
    let mut input_ids = prefix;
    for part in kept_steps.iter().chain([&sample.answer]) {
        input_ids.extend_from_slice(part);
        labels.extend(part.iter().map(|&id| i64::from(id)));
    }
    let n_latents = input_ids.iter().filter(|&&id| id == special.latent).count();
    StagedSample { input_ids, labels, n_latents }
}

/// The stage one sample trains at: with probability `uniform_prob` a stage drawn uniformly
/// from `0..=n_steps`, otherwise `epoch_stage`. The generator is not touched when
/// `uniform_prob` is 0, so the default setting leaves the caller's random stream as it is.
pub fn sample_stage(
    cfg: &CurriculumConfig,
    epoch_stage: usize,
    n_steps: usize,
    rng: &mut impl rand::Rng,
) -> usize {
    if cfg.uniform_prob > 0.0 && rng.random::<f64>() < cfg.uniform_prob {
        rng.random_range(0..=n_steps)
    } else {
        epoch_stage
    }
}

/// The generation prompt of `sample` at stage `stage` (docs/DESIGN.md, "Evaluation prompt"):
/// `question + [start_latent] + [latent] * (min(stage, max_latent_stage) * c_thought) +
/// [end_latent]` for `coconut` and `no-curriculum` (which always uses the final stage), the
/// same with pause ids for `pause-as-thought`, the question alone for `cot`, `no-cot` and
/// `no-thoughts`, and `question + [pause] * max_thoughts()` for `pause-token`.
///
/// With `pad_latent_to_max` every prompt of one stage holds `min(stage, max_latent_stage) *
/// c_thought` thoughts; without it the count is also capped by the sample's step count, as
/// the reference evaluates (so prompts of one stage can differ in thought count).
pub fn eval_prompt(
    cfg: &CurriculumConfig,
    special: &SpecialTokens,
    sample: &TokenizedSample,
    stage: usize,
) -> Vec<u32> {
    let slots = prompt_slots(cfg, stage, Some(sample.steps.len()));
    prompt_with_slots(cfg, special, &sample.question, slots)
}

/// The number of thought (or pause) slots in the evaluation prompt at `stage` of a sample
/// with `n_steps` reasoning steps; `None` for a question whose steps are unknown (a question
/// of one's own), which gets the count of a sample with enough steps.
///
/// As the reference evaluates: `min(stage, max_latent_stage) * c_thought` thoughts, capped by
/// the sample's step count unless `pad_latent_to_max` (prompts of one batch may then differ
/// in thought count; generation groups them). `pause-token` always has `max_thoughts()`
/// pauses, and the modes without thoughts have none.
pub fn prompt_slots(cfg: &CurriculumConfig, stage: usize, n_steps: Option<usize>) -> usize {
    match cfg.mode {
        Mode::Coconut | Mode::NoCurriculum | Mode::PauseAsThought => {
            let stage = cfg.effective_stage(stage).min(cfg.max_latent_stage);
            let stage = match n_steps {
                Some(n) if !cfg.pad_latent_to_max => stage.min(n),
                _ => stage,
            };
            stage * cfg.c_thought
        }
        Mode::Cot | Mode::NoCot | Mode::NoThoughts => 0,
        Mode::PauseToken => cfg.max_thoughts(),
    }
}

/// The evaluation prompt of `cfg.mode` with `slots` thought (or pause) slots after the
/// tokenized `question` (as [`Tokenizer::encode_question`] gives it, BOS included): `question + [start_latent] + [latent] * slots + [end_latent]` for
/// `coconut` and `no-curriculum`, the same with pause ids for `pause-as-thought`,
/// `question + [pause] * slots` for `pause-token`, and the question alone for the modes
/// without thoughts (which ignore `slots`).
pub fn prompt_with_slots(
    cfg: &CurriculumConfig,
    special: &SpecialTokens,
    question: &[u32],
    slots: usize,
) -> Vec<u32> {
    match cfg.mode {
        Mode::Coconut | Mode::NoCurriculum => {
            slotted(question, Some(special), special.latent, slots)
        }
        Mode::PauseAsThought => slotted(question, Some(special), special.pause, slots),
        Mode::Cot | Mode::NoCot | Mode::NoThoughts => question.to_vec(),
        Mode::PauseToken => slotted(question, None, special.pause, slots),
    }
}

/// (steps removed, thought slots) at `stage` for a sample of `n_steps` steps.
fn schedule(cfg: &CurriculumConfig, stage: usize, n_steps: usize) -> (usize, usize) {
    let (skipped, latents) = if stage > cfg.max_latent_stage {
        let latents = if cfg.pad_latent_to_max {
            cfg.max_latent_stage
        } else {
            n_steps.min(cfg.max_latent_stage)
        };
        (n_steps, latents)
    } else {
        // Not capped by the step count: a 3-step sample at stage 5 gets 5 thoughts and an
        // empty chain, exactly as the reference does.
        (stage.min(n_steps), stage)
    };
    (skipped, latents * cfg.c_thought)
}

/// `question + [start] + [slot] * n + [end]`, or `question + [slot] * n` without markers.
fn slotted(question: &[u32], markers: Option<&SpecialTokens>, slot: u32, n: usize) -> Vec<u32> {
    let mut ids = Vec::with_capacity(question.len() + n + 2);
    ids.extend_from_slice(question);
    if let Some(sp) = markers {
        ids.push(sp.start_latent);
    }
    ids.extend(std::iter::repeat_n(slot, n));
    if let Some(sp) = markers {
        ids.push(sp.end_latent);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const SP: SpecialTokens = SpecialTokens {
        bos: None,
        eos: 0,
        pad: 0,
        start_latent: 1,
        end_latent: 2,
        latent: 3,
        pause: 4,
    };
    const B: u32 = 1; // start-latent
    const E: u32 = 2; // end-latent
    const L: u32 = 3; // latent
    const P: u32 = 4; // pause
    const X: i64 = IGNORE_INDEX;

    /// Question [10, 11], steps [20], [21, 22], [23], answer [30, 0].
    fn sample() -> TokenizedSample {
        TokenizedSample {
            question: vec![10, 11],
            steps: vec![vec![20], vec![21, 22], vec![23]],
            answer: vec![30, 0],
        }
    }

    fn cfg(mode: Mode) -> CurriculumConfig {
        CurriculumConfig { mode, max_latent_stage: 4, ..CurriculumConfig::default() }
    }

    fn staged(cfg: &CurriculumConfig, stage: usize) -> StagedSample {
        training_sample(cfg, &SP, &sample(), stage)
    }

    #[test]
    fn coconut_stage_0_keeps_every_step_between_empty_markers() {
        let s = staged(&cfg(Mode::Coconut), 0);
        assert_eq!(s.input_ids, [10, 11, B, E, 20, 21, 22, 23, 30, 0]);
        assert_eq!(s.labels, [X, X, X, X, 20, 21, 22, 23, 30, 0]);
        assert_eq!(s.n_latents, 0);
    }

    #[test]
    fn coconut_stage_k_replaces_the_first_k_steps() {
        let s = staged(&cfg(Mode::Coconut), 2);
        assert_eq!(s.input_ids, [10, 11, B, L, L, E, 23, 30, 0]);
        assert_eq!(s.labels, [X, X, X, X, X, X, 23, 30, 0]);
        assert_eq!(s.n_latents, 2);
    }

    #[test]
    fn stage_past_the_step_count_is_not_capped() {
        // 3 steps, stage 4 <= max_latent_stage: 4 thoughts, no step left.
        let s = staged(&cfg(Mode::Coconut), 4);
        assert_eq!(s.input_ids, [10, 11, B, L, L, L, L, E, 30, 0]);
        assert_eq!(s.labels, [X, X, X, X, X, X, X, X, 30, 0]);
        assert_eq!(s.n_latents, 4);
    }

    #[test]
    fn final_stage_with_and_without_pad_latent_to_max() {
        let mut c = cfg(Mode::Coconut);
        // stage 5 > max_latent_stage 4: all steps removed, min(3 steps, 4) thoughts.
        let s = staged(&c, 5);
        assert_eq!(s.input_ids, [10, 11, B, L, L, L, E, 30, 0]);
        assert_eq!(s.n_latents, 3);
        c.pad_latent_to_max = true;
        let s = staged(&c, 5);
        assert_eq!(s.input_ids, [10, 11, B, L, L, L, L, E, 30, 0]);
        assert_eq!(s.labels, [X, X, X, X, X, X, X, X, 30, 0]);
        // With more steps than max_latent_stage both settings give max_latent_stage.
        c.max_latent_stage = 2;
        c.pad_latent_to_max = false;
        assert_eq!(staged(&c, 3).input_ids, [10, 11, B, L, L, E, 30, 0]);
    }

    #[test]
    fn c_thought_multiplies_the_thoughts() {
        let c = CurriculumConfig { c_thought: 2, ..cfg(Mode::Coconut) };
        let s = staged(&c, 1);
        assert_eq!(s.input_ids, [10, 11, B, L, L, E, 21, 22, 23, 30, 0]);
        assert_eq!(s.labels, [X, X, X, X, X, X, 21, 22, 23, 30, 0]);
        assert_eq!(s.n_latents, 2);
        assert_eq!(staged(&c, 9).n_latents, 6);
        assert_eq!(c.max_thoughts(), 8);
    }

    #[test]
    fn cot_keeps_every_step_without_markers_at_any_stage() {
        let c = cfg(Mode::Cot);
        for stage in [0, 2, 9] {
            let s = staged(&c, stage);
            assert_eq!(s.input_ids, [10, 11, 20, 21, 22, 23, 30, 0]);
            assert_eq!(s.labels, [X, X, 20, 21, 22, 23, 30, 0]);
        }
        assert_eq!(eval_prompt(&c, &SP, &sample(), 3), [10, 11]);
    }

    #[test]
    fn no_cot_is_question_then_answer() {
        let c = cfg(Mode::NoCot);
        let s = staged(&c, 3);
        assert_eq!(s.input_ids, [10, 11, 30, 0]);
        assert_eq!(s.labels, [X, X, 30, 0]);
        assert_eq!(eval_prompt(&c, &SP, &sample(), 3), [10, 11]);
    }

    #[test]
    fn no_thoughts_removes_steps_without_replacing_them() {
        let c = cfg(Mode::NoThoughts);
        assert_eq!(staged(&c, 0).input_ids, [10, 11, 20, 21, 22, 23, 30, 0]);
        let s = staged(&c, 2);
        assert_eq!(s.input_ids, [10, 11, 23, 30, 0]);
        assert_eq!(s.labels, [X, X, 23, 30, 0]);
        assert_eq!(s.n_latents, 0);
        assert_eq!(staged(&c, 7).input_ids, [10, 11, 30, 0]);
        assert_eq!(eval_prompt(&c, &SP, &sample(), 2), [10, 11]);
    }

    #[test]
    fn pause_as_thought_puts_pause_in_the_latent_slots() {
        let c = CurriculumConfig { c_thought: 2, ..cfg(Mode::PauseAsThought) };
        let s = staged(&c, 1);
        assert_eq!(s.input_ids, [10, 11, B, P, P, E, 21, 22, 23, 30, 0]);
        assert_eq!(s.labels, [X, X, X, X, X, X, 21, 22, 23, 30, 0]);
        assert_eq!(s.n_latents, 0);
        assert_eq!(eval_prompt(&c, &SP, &sample(), 1), [10, 11, B, P, P, E]);
    }

    #[test]
    fn pause_token_puts_max_thoughts_pauses_between_question_and_answer() {
        let c = cfg(Mode::PauseToken);
        for stage in [0, 3] {
            let s = staged(&c, stage);
            assert_eq!(s.input_ids, [10, 11, P, P, P, P, 30, 0]);
            assert_eq!(s.labels, [X, X, X, X, X, X, 30, 0]);
            assert_eq!(s.n_latents, 0);
        }
        assert_eq!(eval_prompt(&c, &SP, &sample(), 0), [10, 11, P, P, P, P]);
    }

    #[test]
    fn no_curriculum_always_trains_and_evaluates_the_final_stage() {
        let c = cfg(Mode::NoCurriculum);
        let coconut = cfg(Mode::Coconut);
        for stage in [0, 2, 5] {
            assert_eq!(staged(&c, stage), staged(&coconut, 5));
            // Three steps without pad_latent_to_max: three thoughts, as in training.
            assert_eq!(eval_prompt(&c, &SP, &sample(), stage), [10, 11, B, L, L, L, E]);
        }
        assert_eq!(c.stage_of_epoch(0), 5);
    }

    #[test]
    fn coconut_eval_prompt_caps_at_max_latent_stage() {
        let c = CurriculumConfig { c_thought: 2, max_latent_stage: 2, ..cfg(Mode::Coconut) };
        assert_eq!(eval_prompt(&c, &SP, &sample(), 0), [10, 11, B, E]);
        assert_eq!(eval_prompt(&c, &SP, &sample(), 1), [10, 11, B, L, L, E]);
        assert_eq!(eval_prompt(&c, &SP, &sample(), 7), [10, 11, B, L, L, L, L, E]);
    }

    #[test]
    fn stage_of_epoch_per_mode() {
        let c = CurriculumConfig { epochs_per_stage: 3, ..cfg(Mode::Coconut) };
        let stages: Vec<_> = (0..8).map(|e| c.stage_of_epoch(e)).collect();
        assert_eq!(stages, [0, 0, 0, 1, 1, 1, 2, 2]);
        for mode in [Mode::Cot, Mode::NoCot, Mode::PauseToken] {
            let c = CurriculumConfig { mode, ..c.clone() };
            assert_eq!(c.stage_of_epoch(20), 0);
        }
        let c = CurriculumConfig { mode: Mode::NoThoughts, ..c };
        assert_eq!(c.stage_of_epoch(7), 2);
    }

    #[test]
    fn uniform_prob_is_reproducible_from_a_seed() {
        let c = CurriculumConfig { uniform_prob: 0.5, ..cfg(Mode::Coconut) };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200).map(|_| sample_stage(&c, 9, 3, &mut rng)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        // About half keep the epoch stage, the rest spread over 0..=3.
        let kept = a.iter().filter(|&&s| s == 9).count();
        assert!((60..=140).contains(&kept), "{kept}");
        for s in 0..=3 {
            assert!(a.contains(&s), "stage {s} never drawn");
        }
        assert!(a.iter().all(|&s| s == 9 || s <= 3));

        let never = CurriculumConfig::default();
        let always = CurriculumConfig { uniform_prob: 1.0, ..never.clone() };
        let mut rng = StdRng::seed_from_u64(0);
        assert!((0..50).all(|_| sample_stage(&never, 2, 3, &mut rng) == 2));
        assert!((0..50).all(|_| sample_stage(&always, 9, 3, &mut rng) <= 3));
    }

    #[test]
    fn validate_rejects_bad_values_and_serde_uses_kebab_case() {
        assert!(CurriculumConfig::default().validate().is_ok());
        let bad = [
            CurriculumConfig { c_thought: 0, ..Default::default() },
            CurriculumConfig { epochs_per_stage: 0, ..Default::default() },
            CurriculumConfig { uniform_prob: 1.5, ..Default::default() },
            CurriculumConfig { uniform_prob: f64::NAN, ..Default::default() },
        ];
        for (c, field) in
            bad.iter().zip(["c_thought", "epochs_per_stage", "uniform_prob", "uniform_prob"])
        {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }

        let c: CurriculumConfig =
            serde_json::from_str(r#"{"mode": "pause-as-thought", "c_thought": 2}"#).unwrap();
        assert_eq!(c.mode, Mode::PauseAsThought);
        assert_eq!(c.c_thought, 2);
        assert_eq!(c.max_latent_stage, 6);
        assert_eq!(c.epochs_per_stage, 5);
        assert!(serde_json::from_str::<CurriculumConfig>(r#"{"c_thoughts": 2}"#).is_err());
        assert_eq!(serde_json::to_string(&Mode::NoCurriculum).unwrap(), "\"no-curriculum\"");
    }

    #[test]
    fn c_thought_0_is_accepted_only_by_the_modes_without_thoughts() {
        // The reference's GSM8k CoT config has c_thought: 0.
        for mode in [Mode::Cot, Mode::NoCot, Mode::NoThoughts] {
            let c = CurriculumConfig { mode, c_thought: 0, ..Default::default() };
            assert!(c.validate().is_ok(), "{mode:?}");
        }
        // Coconut, no-curriculum and pause-as-thought multiply their slots by c_thought, and
        // pause-token's pause count is max_latent_stage * c_thought: 0 would place none.
        for mode in [Mode::Coconut, Mode::NoCurriculum, Mode::PauseAsThought, Mode::PauseToken] {
            let c = CurriculumConfig { mode, c_thought: 0, ..Default::default() };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("c_thought"), "{mode:?}: {e}");
        }
    }

    #[test]
    fn tokenize_samples_follows_the_design_and_keeps_order() {
        let tok = crate::tokenizer::tests::gpt2();
        let samples = vec![
            Sample {
                question: "Hello world".into(),
                steps: vec![" the".into(), "<<".into()],
                answer: "42".into(),
            },
            Sample { question: "Hello".into(), steps: vec![], answer: "True".into() },
        ];
        let t = tokenize_samples(&tok, &samples);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].question, [15496, 995, 198]);
        assert_eq!(t[0].steps, [vec![262, 198], vec![16791, 198]]);
        assert_eq!(t[0].answer, [21017, 5433, 50256]);
        assert_eq!(t[1].question, [15496, 198]);
        assert!(t[1].steps.is_empty());
    }
}
