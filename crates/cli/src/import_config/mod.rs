//! `coconut import-config`: an args YAML of the official Coconut repository (the file its
//! `run.py` reads) as one of our TOML run configs.
//!
//! Every key `run.py` and `dataset.py` read is mapped or dropped with a reason, one line per
//! decision on stderr; an unknown key, a missing key, a value of the wrong type or a mode
//! combination the official code does not define is an error naming the file and the key.
//! Where our defaults differ from the official behaviour the value is written out, so the
//! config does not depend on our defaults.

mod toml_out;
mod train;
mod yaml;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use coconut_trainer::RunConfig;

use toml_out::{int, s, Toml};
use yaml::Args;

/// `coconut import-config FILE`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The official args file (for example `args/prosqa_coconut.yaml`).
    pub file: PathBuf,
    /// HF GPT-2 folder standing for `model_id` (default: `models/<last part of model_id>`).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Folder that `load_model_path`'s checkpoint is converted into (default:
    /// `converted/<run folder>-<file name>` of that path).
    #[arg(long)]
    pub init_checkpoint: Option<PathBuf>,
    /// GPUs the official run was launched on: `batch_size_training` is per GPU, so
    /// `train.grad_accum` = `gradient_accumulation_steps` x this (default: the file's
    /// `# need N gpus` comment, else 1).
    #[arg(long)]
    pub gpus: Option<usize>,
}

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// See [`ImportArgs::model_dir`].
    pub model_dir: Option<PathBuf>,
    /// See [`ImportArgs::init_checkpoint`].
    pub init_checkpoint: Option<PathBuf>,
    /// See [`ImportArgs::gpus`].
    pub gpus: Option<usize>,
}

/// An imported config: the TOML text and one note per decision.
#[derive(Debug, Clone)]
pub struct Imported {
    /// A run config that [`RunConfig::parse`] accepts.
    pub toml: String,
    /// What became of every key, and every value written that the file did not give.
    pub notes: Vec<String>,
}

/// Reads `args.file`, prints the TOML to stdout and the notes to stderr.
pub fn run(args: &ImportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let options = ImportOptions {
        model_dir: args.model_dir.clone(),
        init_checkpoint: args.init_checkpoint.clone(),
        gpus: args.gpus,
    };
    let imported = import(&text, &args.file, &options)?;
    for note in &imported.notes {
        eprintln!("import-config: {note}");
    }
    print!("{}", imported.toml);
    Ok(())
}

/// Every key of the official args files, in their order; they are exactly the arguments
/// `run.py` and `dataset.py` read.
pub const OFFICIAL_KEYS: [&str; 28] = [
    "project",
    "save_path",
    "name",
    "only_eval",
    "coconut",
    "cot",
    "no_thoughts",
    "no_cot",
    "c_thought",
    "epochs_per_stage",
    "max_latent_stage",
    "pad_latent_to_max",
    "save_only_improve",
    "uniform_prob",
    "model_id",
    "load_model_path",
    "seed",
    "resume",
    "bf16",
    "train_path",
    "val_path",
    "reset_optimizer",
    "batch_size_training",
    "debug",
    "gradient_accumulation_steps",
    "num_epochs",
    "lr",
    "weight_decay",
];

/// Keys `run.py` may do without: `project` is read only when wandb logs.
const OPTIONAL_KEYS: [&str; 1] = ["project"];

/// Imports the YAML `text`; `path` names the file in messages.
pub fn import(text: &str, path: &Path, options: &ImportOptions) -> Result<Imported> {
    let file = path.display().to_string();
    let args = Args::read(text, &file)?;
    let mut import =
        Import { args, options, file: file.clone(), out: Toml::default(), notes: Vec::new() };
    let mode = import.method()?;
    let val_path = import.name_and_data()?;
    let model_dir = import.pretrained()?;
    let load_model_path = import.init_checkpoint(&model_dir)?;
    let epochs_per_stage = import.curriculum(mode)?;
    let gpus = import.optimisation(text)?;
    import.run_settings(gpus)?;
    import.position(mode, load_model_path.as_deref(), epochs_per_stage)?;
    import.dropped()?;
    import.eval(&val_path);

    let header = format!(
        "# Imported by `coconut import-config` from {}, an args file of the official Coconut\n\
         # repository. Every key of that file is accounted for in the notes the command printed.\n",
        path.file_name().map_or(file.clone(), |n| n.to_string_lossy().into_owned())
    );
    let toml = header + &import.out.render();
    RunConfig::parse(&toml, path)
        .with_context(|| format!("{file}: the imported config is not a valid run config"))?;
    Ok(Imported { toml, notes: import.notes })
}

/// An import under way: the file's arguments, the TOML written so far and the notes.
struct Import<'a> {
    args: Args,
    options: &'a ImportOptions,
    file: String,
    out: Toml,
    notes: Vec<String>,
}

impl Import<'_> {
    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The method: `run.py` sets coconut = False when no_thoughts is set, and trains the
    /// plain model on the Coconut layout when no flag is set.
    fn method(&mut self) -> Result<&'static str> {
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
    fn name_and_data(&mut self) -> Result<String> {
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
    fn pretrained(&mut self) -> Result<String> {
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
    fn init_checkpoint(&mut self, model_dir_text: &str) -> Result<Option<String>> {
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
    fn curriculum(&mut self, mode: &'static str) -> Result<usize> {
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
    fn dropped(&mut self) -> Result<()> {
        match self.args.optional_string("project")? {
            Some(p) => self.note(format!(
                "project: {p} -> dropped (wandb project; ours logs to <run>/metrics.jsonl)"
            )),
            None => self.note("project: absent (wandb only)".to_string()),
        }
        Ok(())
    }

    /// `[eval]`, whose decoding length depends on the validation file.
    fn eval(&mut self, val_path: &str) {
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
fn has_thoughts(mode: &str) -> bool {
    matches!(mode, "coconut" | "pause-as-thought")
}

/// `Python`'s spelling of a boolean, as the official files write them.
fn py_bool(b: bool) -> &'static str {
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
fn converted_name(ckpt: &str) -> String {
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
fn needed_gpus(text: &str) -> Option<usize> {
    text.lines().find_map(|line| {
        let comment = line.trim().strip_prefix('#')?.trim().to_lowercase();
        let rest = comment.strip_prefix("need")?.trim_start();
        let (n, tail) = rest.split_once(char::is_whitespace)?;
        tail.trim().starts_with("gpu").then_some(())?;
        n.parse().ok().filter(|&n| n > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coconut_curriculum::Mode;
    use coconut_trainer::OptimizerReset;

    fn official_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/official/args")
    }

    fn import_official(name: &str) -> (RunConfig, Imported) {
        let path = official_dir().join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let imported = import(&text, &path, &ImportOptions::default()).unwrap();
        let config = RunConfig::parse(&imported.toml, &path).unwrap();
        (config, imported)
    }

    /// prosqa_coconut.yaml with `edit` applied to its text.
    fn import_edited(edit: impl Fn(&str) -> String) -> Result<Imported> {
        let path = official_dir().join("prosqa_coconut.yaml");
        let text = edit(&std::fs::read_to_string(&path).unwrap());
        import(&text, Path::new("edited.yaml"), &ImportOptions::default())
    }

    #[test]
    fn every_official_args_file_imports_to_a_valid_run_config() {
        let mut names: Vec<String> = std::fs::read_dir(official_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 7, "{names:?}");
        for name in &names {
            let (config, imported) = import_official(name);
            // One note per decision, and every key of the file is named in one.
            let text = std::fs::read_to_string(official_dir().join(name)).unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
                let key = line.split(':').next().unwrap().trim();
                assert!(
                    imported.notes.iter().any(|n| n.contains(&format!("{key}:"))),
                    "{name}: no note for {key}"
                );
            }
            assert_eq!(config.train.device, tch::Device::Cuda(0), "{name}");
            assert_eq!(config.train.grad_accum, 4, "{name}: 4 GPUs x 1");
            assert_eq!(config.train.batch_size, 32, "{name}");
            assert_eq!(config.train.lr, 1e-4, "{name}");
            assert_eq!(config.train.weight_decay, 0.01, "{name}");
            assert_eq!(config.train.keep_last, 0, "{name}");
            assert!(config.train.resume, "{name}");
            assert!(config.curriculum.pad_latent_to_max, "{name}");
            assert_eq!(config.model.pretrained, Some(PathBuf::from("models/gpt2")), "{name}");
            assert_eq!(config.output_dir, PathBuf::from("YOUR_PATH_TO_SAVE_THE_MODEL"));
        }
    }

    #[test]
    fn official_values_land_where_expected() {
        let (c, notes) = import_official("prosqa_coconut.yaml");
        assert_eq!(c.name, "prosqa-coconut");
        assert_eq!(c.data.train, PathBuf::from("data/prosqa_train.json"));
        assert_eq!(c.data.valid, PathBuf::from("data/prosqa_valid.json"));
        assert_eq!(c.curriculum.mode, Mode::Coconut);
        assert_eq!(
            (c.curriculum.c_thought, c.curriculum.epochs_per_stage, c.curriculum.max_latent_stage),
            (1, 5, 6)
        );
        assert_eq!(c.curriculum.uniform_prob, 0.0);
        assert_eq!(c.train.num_epochs, 50);
        assert_eq!(c.train.optimizer_reset, OptimizerReset::Epoch);
        assert_eq!(c.train.start_epoch, 0);
        assert_eq!(c.train.precision, Some(coconut_trainer::Precision::F32));
        assert!(!c.train.save_only_improve && !c.train.group_by_length);
        assert_eq!((c.train.betas, c.train.eps), ((0.9, 0.999), 1e-8));
        assert_eq!(c.model.init_checkpoint, None);
        assert_eq!(c.eval.max_new_tokens, 128);
        assert!(c.eval.every_epoch);
        assert!(!notes.toml.contains("start_epoch"), "resume 0 writes no start_epoch");

        let (c, _) = import_official("gsm_cot.yaml");
        assert_eq!(c.curriculum.mode, Mode::Cot);
        assert_eq!(c.curriculum.c_thought, 0, "c_thought 0 is accepted with cot");
        assert_eq!(c.train.optimizer_reset, OptimizerReset::Never);
        assert!(c.train.save_only_improve);
        assert_eq!(c.eval.max_new_tokens, 64);
        assert_eq!(c.train.num_epochs, 25);

        let (c, imported) = import_official("gsm_coconut.yaml");
        assert_eq!(c.curriculum.c_thought, 2);
        assert_eq!((c.curriculum.epochs_per_stage, c.curriculum.max_latent_stage), (3, 3));
        assert_eq!(c.train.start_epoch, 3);
        assert_eq!(
            c.model.init_checkpoint,
            Some(PathBuf::from("converted/YOUR_PATH_TO_COT_CHECKPOINT"))
        );
        assert!(imported.notes.iter().any(|n| n.contains("convert_official_checkpoint.py")));

        let (c, imported) = import_official("prontoqa_coconut_eval.yaml");
        assert_eq!(c.data.valid, PathBuf::from("data/prontoqa_test.json"));
        assert_eq!(c.train.start_epoch, 40);
        assert!(imported
            .notes
            .iter()
            .any(|n| n.contains("coconut eval") && n.contains("--stage 8")));
    }

    #[test]
    fn options_set_the_model_folders_and_the_gpu_count() {
        let path = official_dir().join("gsm_coconut.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let options = ImportOptions {
            model_dir: Some("hf/gpt2".into()),
            init_checkpoint: Some("runs/cot-e6".into()),
            gpus: Some(1),
        };
        let c = RunConfig::parse(&import(&text, &path, &options).unwrap().toml, &path).unwrap();
        assert_eq!(c.model.pretrained, Some(PathBuf::from("hf/gpt2")));
        assert_eq!(c.model.init_checkpoint, Some(PathBuf::from("runs/cot-e6")));
        assert_eq!(c.train.grad_accum, 1);
        // Without the comment and without --gpus: 1, said so.
        let bare = text.replace("# need 4 gpus", "");
        let imported = import(&bare, &path, &ImportOptions::default()).unwrap();
        assert!(imported.toml.contains("grad_accum = 1"));
        assert!(imported.notes.iter().any(|n| n.contains("no GPU count in the file")));
        assert_eq!(converted_name("/ckpts/gsm-cot/checkpoint_6"), "gsm-cot-checkpoint_6");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_file_and_the_key() {
        let e = import_edited(|t| format!("{t}\nwarmup_steps: 100\nlr_sched: cosine\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("edited.yaml") && e.contains("`warmup_steps`"), "{e}");
        assert!(e.contains("`lr_sched`"), "{e}");
        let e = import_edited(|t| t.replace("seed: 0\n", "")).unwrap_err().to_string();
        assert!(e.contains("edited.yaml") && e.contains("missing") && e.contains("`seed`"), "{e}");
        let e = import_edited(|t| t.replace("bf16: False", "bf16: maybe")).unwrap_err().to_string();
        assert!(e.contains("`bf16`") && e.contains("True or False"), "{e}");
    }

    #[test]
    fn mode_flags_map_to_modes_and_contradictions_are_errors() {
        let with = |flags: [&str; 4]| {
            import_edited(|t| {
                let mut t = t.to_string();
                for (key, v) in ["coconut", "cot", "no_thoughts", "no_cot"].iter().zip(flags) {
                    let default = if *key == "coconut" { "True" } else { "False" };
                    t = t.replace(&format!("\n{key}: {default}"), &format!("\n{key}: {v}"));
                }
                t
            })
        };
        let mode = |flags| {
            let imported = with(flags).unwrap();
            RunConfig::parse(&imported.toml, Path::new("x")).unwrap().curriculum.mode
        };
        assert_eq!(mode(["False", "True", "False", "False"]), Mode::Cot);
        assert_eq!(mode(["False", "False", "False", "True"]), Mode::NoCot);
        assert_eq!(mode(["False", "False", "True", "False"]), Mode::NoThoughts);
        assert_eq!(mode(["True", "False", "True", "False"]), Mode::NoThoughts);
        assert_eq!(mode(["False", "False", "False", "False"]), Mode::PauseAsThought);
        for bad in [["True", "True", "False", "False"], ["False", "True", "False", "True"]] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("edited.yaml") && e.contains("not a method"), "{e}");
        }
    }

    #[test]
    fn c_thought_0_is_accepted_without_thoughts_and_refused_with_them() {
        let cot = import_edited(|t| {
            t.replace("coconut: True", "coconut: False")
                .replace("\ncot: False", "\ncot: True")
                .replace("c_thought: 1", "c_thought: 0")
        })
        .unwrap();
        let c = RunConfig::parse(&cot.toml, Path::new("x")).unwrap();
        assert_eq!((c.curriculum.mode, c.curriculum.c_thought), (Mode::Cot, 0));
        let e = import_edited(|t| t.replace("c_thought: 1", "c_thought: 0")).unwrap_err();
        assert!(format!("{e:#}").contains("c_thought"), "{e:#}");
    }
}
