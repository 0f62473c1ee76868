//! The sections of an import but `[train]`: the method, the run's name and data, the
//! model, the curriculum, evaluation, and the keys dropped. Each method maps the official
//! keys of its part and notes every decision.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::toml_out::{int, s, Toml};
use super::yaml::Args;

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The HF folder standing for `model_id` (`--model-dir`).
    pub model_dir: Option<PathBuf>,
    /// The folder `load_model_path` is converted into (`--init-checkpoint`).
    pub init_checkpoint: Option<PathBuf>,
    /// The GPUs of the official run (`--gpus`).
    pub gpus: Option<usize>,
}

/// An import under way: the file's arguments, the TOML written so far and the notes.
pub(super) struct Import<'a> {
    pub(super) args: Args,
    pub(super) options: &'a ImportOptions,
    pub(super) file: String,
    pub(super) out: Toml,
    pub(super) notes: Vec<String>,
}

impl Import<'_> {
    pub(super) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The method: `run.py` sets coconut = False when no_thoughts is set, and trains the
    /// plain model on the Coconut layout when no flag is set.
    pub(super) fn method(&mut self) -> Result<&'static str> {
        let file = self.file.clone();
        // plain model on the Coconut layout when no flag is set.
        let flags = (
            self.args.bool("coconut")?,
            self.args.bool("cot")?,
            self.args.bool("no_thoughts")?,
            self.args.bool("no_cot")?,
        );
        let flag_text = format!(
            "coconut: {}, cot: {}, no_thoughts: {}, no_cot: {}",
            py_bool(flags.0),
            py_bool(flags.1),
            py_bool(flags.2),
            py_bool(flags.3)
        );
        let mode = match flags {
            (true, false, false, false) => {
                self.note(format!("{flag_text} -> curriculum.mode = \"coconut\""));
                "coconut"
            }
            (false, true, false, false) => {
                self.note(format!("{flag_text} -> curriculum.mode = \"cot\""));
                "cot"
            }
            (false, false, false, true) => {
                self.note(format!("{flag_text} -> curriculum.mode = \"no-cot\""));
                "no-cot"
            }
            (coconut, false, true, false) => {
                let also = if coconut {
                    " (run.py sets coconut to False when no_thoughts is set)"
                } else {
                    ""
                };
                self.note(format!("{flag_text} -> curriculum.mode = \"no-thoughts\"{also}"));
                "no-thoughts"
            }
            (false, false, false, false) => {
                self.note(format!(
                    "{flag_text} -> curriculum.mode = \"pause-as-thought\": with no flag set, run.py \
                     trains the plain model on the Coconut layout and feeds <|latent|> as an ordinary \
                     learned token (the pause-as-thought baseline); ours puts <pause> in those slots"
                ));
                "pause-as-thought"
            }
            _ => bail!(
                "{file}: {flag_text} is not a method of the official code: set exactly one of \
                 coconut, cot, no_thoughts and no_cot (or none, for pause as thought)"
            ),
        };
        if !has_thoughts(mode) {
            self.note(
                "the official code adds no latent token in this mode; ours adds <|start-latent|>, \
                 <|end-latent|>, <|latent|> and <pause> to every model (rows copied from `<<`, never \
                 fed), so the softmax has 4 more entries"
                    .to_string(),
            );
        }
        Ok(mode)
    }

    /// The run's name and folder, and `[data]`; returns the validation file.
    pub(super) fn name_and_data(&mut self) -> Result<String> {
        let name = self.args.string("name")?;
        self.out.top("name", s(&name));
        self.note(format!("name: {name} -> name"));
        let save_path = self.args.string("save_path")?;
        self.out.top("output_dir", s(&save_path));
        self.note(format!(
            "save_path: {save_path} -> output_dir (the run folder is <output_dir>/<name>, as official){}",
            placeholder(&save_path)
        ));

        // [data]
        let train_path = self.args.string("train_path")?;
        let val_path = self.args.string("val_path")?;
        self.out.key("data", "train", s(&train_path));
        self.out.key("data", "valid", s(&val_path));
        self.note(format!(
            "train_path: {train_path} -> data.train, val_path: {val_path} -> data.valid (kept as \
             written, relative to the working directory; the official data files live in the \
             official repository's data/ folder, ProsQA as published, GSM8k and ProntoQA made by its \
             preprocessing/ scripts; our loader reads that JSON as it is)"
        ));
        let debug = self.args.bool("debug")?;
        let (max_train, max_valid) = if debug { (5000, 32) } else { (0, 0) };
        self.out.key("data", "max_train_samples", int(max_train));
        self.out.key("data", "max_valid_samples", int(max_valid));
        if debug {
            self.note(
                "debug: True -> data.max_train_samples = 5000, data.max_valid_samples = 32 (official \
                 debug runs use those subsets and also skip wandb and checkpoint saving; ours still \
                 saves checkpoints)"
                    .to_string(),
            );
        } else {
            self.note(
                "debug: False -> dropped (it only turns wandb off and takes data subsets); \
                  data.max_train_samples = 0 and data.max_valid_samples = 0 (all samples)"
                    .to_string(),
            );
        }
        Ok(val_path)
    }

    /// `[model]`'s pretrained folder; returns it.
    pub(super) fn pretrained(&mut self) -> Result<String> {
        let model_id = self.args.string("model_id")?;
        let model_dir = match &self.options.model_dir {
            Some(dir) => dir.clone(),
            None => {
                let last = model_id.rsplit('/').next().unwrap_or(&model_id);
                Path::new("models").join(last)
            }
        };
        let model_dir_text = model_dir.display().to_string();
        self.out.key("model", "pretrained", s(&model_dir_text));
        self.note(format!(
            "model_id: {model_id} -> model.pretrained = \"{model_dir_text}\": an HF folder \
             (config.json, model.safetensors, tokenizer.json) must be there; get it where a model \
             hub is reachable, for example `huggingface-cli download {model_id} --local-dir \
             {model_dir_text}`{}",
            if self.options.model_dir.is_some() {
                " (folder from --model-dir)"
            } else {
                " (--model-dir sets another folder)"
            }
        ));
        if !model_id.to_lowercase().contains("gpt2") {
            self.note(format!(
                "model_id: {model_id} does not look like a GPT-2; ours trains GPT-2 models only, so \
                 loading that folder will fail unless it holds a GPT-2"
            ));
        }
        self.out.key("model", "latent_init_token", s("<<"));
        self.note("the new token rows start as a copy of `<<`, as in run.py -> model.latent_init_token = \"<<\""
            .to_string());
        Ok(model_dir_text)
    }

    /// `[model]`'s initial checkpoint, the conversion of `load_model_path` (to be made from
    /// `model_dir`); returns `load_model_path`.
    pub(super) fn init_checkpoint(&mut self, model_dir_text: &str) -> Result<Option<String>> {
        let load_model_path = self.args.optional_string("load_model_path")?;
        match load_model_path.as_deref() {
            None | Some("None") => {
                let shown = load_model_path.as_deref().unwrap_or("null");
                self.note(format!(
                    "load_model_path: {shown} -> no model.init_checkpoint (the run starts from model_id)"
                ));
            }
            Some(ckpt) => {
                let dir = match &self.options.init_checkpoint {
                    Some(dir) => dir.clone(),
                    None => Path::new("converted").join(converted_name(ckpt)),
                };
                let dir_text = dir.display().to_string();
                self.out.key("model", "init_checkpoint", s(&dir_text));
                self.note(format!(
                    "load_model_path: {ckpt} -> model.init_checkpoint = \"{dir_text}\": an official \
                     checkpoint (a torch.save'd state dict) must first be converted into that HF \
                     folder: `python3 scripts/convert_official_checkpoint.py {ckpt} --base \
                     {model_dir_text} --out {dir_text}`{}{}",
                    if self.options.init_checkpoint.is_some() {
                        " (folder from --init-checkpoint)"
                    } else {
                        " (--init-checkpoint sets another folder)"
                    },
                    placeholder(ckpt)
                ));
            }
        }
        Ok(load_model_path)
    }

    /// `[curriculum]` of `mode`; returns its epochs per stage.
    pub(super) fn curriculum(&mut self, mode: &'static str) -> Result<usize> {
        self.out.key("curriculum", "mode", s(mode));
        let c_thought = self.args.usize("c_thought")?;
        self.out.key("curriculum", "c_thought", int(c_thought));
        let unused = if has_thoughts(mode) { "" } else { " (unused in this mode)" };
        let forced =
            if mode == "no-thoughts" { "; run.py sets it to 0 for no_thoughts" } else { "" };
        self.note(format!("c_thought: {c_thought} -> curriculum.c_thought{unused}{forced}"));
        let epochs_per_stage = self.args.usize("epochs_per_stage")?;
        self.out.key("curriculum", "epochs_per_stage", int(epochs_per_stage));
        self.note(format!("epochs_per_stage: {epochs_per_stage} -> curriculum.epochs_per_stage"));
        let max_latent_stage = self.args.usize("max_latent_stage")?;
        self.out.key("curriculum", "max_latent_stage", int(max_latent_stage));
        self.note(format!("max_latent_stage: {max_latent_stage} -> curriculum.max_latent_stage"));
        let pad = self.args.bool("pad_latent_to_max")?;
        self.out.key("curriculum", "pad_latent_to_max", toml::Value::Boolean(pad));
        self.note(format!(
            "pad_latent_to_max: {} -> curriculum.pad_latent_to_max = {pad} (written out: our default is false)",
            py_bool(pad)
        ));
        let uniform_prob = self.args.float("uniform_prob")?;
        self.out.key("curriculum", "uniform_prob", toml::Value::Float(uniform_prob));
        self.note(format!("uniform_prob: {uniform_prob} -> curriculum.uniform_prob"));
        Ok(epochs_per_stage)
    }

    /// Keys that only the official logging reads.
    pub(super) fn dropped(&mut self) -> Result<()> {
        match self.args.optional_string("project")? {
            Some(p) => self.note(format!(
                "project: {p} -> dropped (wandb project; ours logs to <run>/metrics.jsonl)"
            )),
            None => self.note("project: absent (wandb only)".to_string()),
        }
        Ok(())
    }

    /// `[eval]`, whose decoding length depends on the validation file.
    pub(super) fn eval(&mut self, val_path: &str) {
        let max_new_tokens = if val_path.contains("gsm") { 64 } else { 128 };
        self.out.key("eval", "max_new_tokens", int(max_new_tokens));
        self.out.key("eval", "every_epoch", toml::Value::Boolean(true));
        self.note(format!(
            "eval.max_new_tokens = {max_new_tokens}: run.py decodes 64 new tokens when val_path \
             contains \"gsm\", else 128; eval.every_epoch = true: run.py evaluates after every epoch"
        ));
    }
}

/// Whether the official code gives `mode` (as our config names it) latent thoughts.
pub(super) fn has_thoughts(mode: &str) -> bool {
    matches!(mode, "coconut" | "pause-as-thought")
}

/// `Python`'s spelling of a boolean, as the official files write them.
pub(super) fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// A note for the official files' `YOUR_PATH_...` placeholders.
fn placeholder(value: &str) -> &'static str {
    if value.starts_with("YOUR_") {
        " (a placeholder of the official file: put the real path there)"
    } else {
        ""
    }
}

/// `<run folder>-<file>` of an official checkpoint path (`.../gsm-cot/checkpoint_6` gives
/// `gsm-cot-checkpoint_6`), or the file name alone.
pub(super) fn converted_name(ckpt: &str) -> String {
    let path = Path::new(ckpt);
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    let parent =
        path.parent().and_then(|p| p.file_name()).map(|f| f.to_string_lossy().into_owned());
    match (parent, file) {
        (Some(parent), Some(file)) => format!("{parent}-{file}"),
        (None, Some(file)) => file,
        _ => "checkpoint".to_string(),
    }
}

/// The N of an official file's `# need N gpus` comment.
pub(super) fn needed_gpus(text: &str) -> Option<usize> {
    text.lines().find_map(|line| {
        let comment = line.trim().strip_prefix('#')?.trim().to_lowercase();
        let rest = comment.strip_prefix("need")?.trim_start();
        let (n, tail) = rest.split_once(char::is_whitespace)?;
        tail.trim().starts_with("gpu").then_some(())?;
        n.parse().ok().filter(|&n| n > 0)
    })
}
