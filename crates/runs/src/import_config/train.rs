//! The `[train]` section of an import: the official optimisation, run settings and
//! starting position.

use anyhow::{bail, Result};

use super::sections::{needed_gpus, py_bool, Import};
use super::toml_out::{int, s};

impl Import<'_> {
    /// `[train]`'s schedule and optimizer; returns the number of GPUs of the official run
    /// (`text` may name it).
    pub(super) fn optimisation(&mut self, text: &str) -> Result<usize> {
        let num_epochs = self.args.usize("num_epochs")?;
        self.out.key("train", "num_epochs", int(num_epochs));
        self.note(format!("num_epochs: {num_epochs} -> train.num_epochs"));
        let batch = self.args.usize("batch_size_training")?;
        self.out.key("train", "batch_size", int(batch));
        let accum = self.args.usize("gradient_accumulation_steps")?;
        let (gpus, gpus_from) = match (self.options.gpus, needed_gpus(text)) {
            (Some(n), _) => (n, "--gpus".to_string()),
            (None, Some(n)) => {
                (n, format!("the file's `# need {n} gpus` comment; --gpus overrides"))
            }
            (None, None) => (1, "no GPU count in the file, so 1; --gpus N sets it".to_string()),
        };
        if gpus == 0 {
            bail!("--gpus must be at least 1");
        }
        self.out.key("train", "grad_accum", int(accum * gpus));
        self.note(format!(
            "batch_size_training: {batch} -> train.batch_size = {batch}, gradient_accumulation_steps: \
             {accum} -> train.grad_accum = {accum} x {gpus} GPUs = {} ({gpus} GPUs from {gpus_from}): \
             batch_size_training is per GPU, so one optimizer step sees {} samples as in the official run",
            accum * gpus,
            batch * accum * gpus
        ));
        let lr = self.args.float("lr")?;
        self.out.key("train", "lr", toml::Value::Float(lr));
        self.note(format!("lr: {lr:e} -> train.lr (constant, no schedule, as official)"));
        let weight_decay = self.args.float("weight_decay")?;
        self.out.key("train", "weight_decay", toml::Value::Float(weight_decay));
        self.note(format!(
            "weight_decay: {weight_decay} -> train.weight_decay (ours decays 2-D weights only; \
             torch's AdamW in run.py also decays biases and layer norms)"
        ));
        self.out.key(
            "train",
            "betas",
            toml::Value::Array(vec![toml::Value::Float(0.9), toml::Value::Float(0.999)]),
        );
        self.out.key("train", "eps", toml::Value::Float(1e-8));
        self.note(
            "train.betas = [0.9, 0.999], train.eps = 1e-8: torch AdamW's defaults, which run.py uses"
                .to_string(),
        );
        Ok(gpus)
    }

    /// `[train]`'s optimizer resets, data order, seed, device, precision and checkpoints.
    pub(super) fn run_settings(&mut self, gpus: usize) -> Result<()> {
        let reset = self.args.bool("reset_optimizer")?;
        let reset_value = if reset { "epoch" } else { "never" };
        self.out.key("train", "optimizer_reset", s(reset_value));
        self.note(if reset {
            "reset_optimizer: True -> train.optimizer_reset = \"epoch\": run.py builds a new AdamW at \
             the start of every epoch, not only at stage switches"
                .to_string()
        } else {
            "reset_optimizer: False -> train.optimizer_reset = \"never\": run.py keeps one AdamW for \
             the whole run"
                .to_string()
        });
        self.out.key("train", "group_by_length", toml::Value::Boolean(false));
        self.note(
            "train.group_by_length = false: official batches are plain shuffled draws".to_string(),
        );
        let seed = self.args.usize("seed")?;
        self.out.key("train", "seed", int(seed));
        self.note(format!(
            "seed: {seed} -> train.seed (our random streams are not PyTorch's: data order and \
             dropout differ from an official run with the same seed)"
        ));
        self.out.key("train", "device", s("cuda:0"));
        self.note(format!(
            "train.device = \"cuda:0\": the official runs are GPU runs (torchrun over {gpus} GPU(s)); \
             ours trains on one device"
        ));
        let bf16 = self.args.bool("bf16")?;
        let precision = if bf16 { "bf16" } else { "f32" };
        self.out.key("train", "precision", s(precision));
        self.note(format!(
            "bf16: {} -> train.precision = \"{precision}\"{}",
            py_bool(bf16),
            if bf16 {
                " (run.py casts the whole model to bf16; ours computes in bf16 with f32 master weights)"
            } else {
                ""
            }
        ));
        self.out.key("train", "save_every_steps", int(0));
        self.out.key("train", "keep_last", int(0));
        let save_only_improve = self.args.bool("save_only_improve")?;
        self.out.key("train", "save_only_improve", toml::Value::Boolean(save_only_improve));
        self.note(format!(
            "save_only_improve: {} -> train.save_only_improve = {save_only_improve}{}; \
             train.save_every_steps = 0 and train.keep_last = 0 (checkpoints at epoch ends only, all \
             kept, as official)",
            py_bool(save_only_improve),
            if save_only_improve {
                " (official saves a checkpoint only when validation accuracy improves; ours saves \
                 every epoch, for resuming, and keeps the best model in <run>/best)"
            } else {
                ""
            }
        ));
        Ok(())
    }

    /// `[train]`'s starting position (`resume`), and what `only_eval` asks for.
    pub(super) fn position(
        &mut self,
        mode: &str,
        load_model_path: Option<&str>,
        epochs_per_stage: usize,
    ) -> Result<()> {
        self.out.key("train", "resume", toml::Value::Boolean(true));
        let resume = self.args.usize("resume")?;
        let only_eval = self.args.bool("only_eval")?;
        if resume > 0 {
            self.out.key("train", "start_epoch", int(resume));
            let skip_note = if load_model_path.is_none_or(|p| p == "None") {
                " (run.py warns that skipping epochs without load_model_path is not an intended use)"
            } else {
                ""
            };
            self.note(format!(
                "resume: {resume} -> train.start_epoch = {resume}: the first {resume} epochs are \
                 skipped, as official{skip_note}; train.resume = true: like run.py, a run folder that \
                 already holds checkpoints resumes from its newest one"
            ));
        } else {
            self.note(
                "resume: 0 -> no train.start_epoch; train.resume = true: like run.py, a run folder \
                 that already holds checkpoints resumes from its newest one"
                    .to_string(),
            );
        }
        if only_eval {
            let stage =
                if matches!(mode, "cot" | "no-cot") { 0 } else { resume / epochs_per_stage.max(1) };
            self.note(format!(
                "only_eval: True -> nothing to train: this config still describes the run; evaluate \
                 the converted checkpoint on val_path with `coconut eval --config <this file> \
                 --checkpoint <converted folder> --split valid --stage {stage}` (stage {stage} is \
                 that of epoch resume = {resume}, which run.py evaluates)"
            ));
        } else {
            self.note("only_eval: False -> dropped (training run)".to_string());
        }
        Ok(())
    }
}
