//! `coconut import-config`: an args YAML of the official Coconut repository (the file its
//! `run.py` reads) as one of our TOML run configs.
//!
//! Every key `run.py` and `dataset.py` read is mapped or dropped with a reason, one line per
//! decision on stderr; an unknown key, a missing key, a value of the wrong type or a mode
//! combination the official code does not define is an error naming the file and the key.
//! Where our defaults differ from the official behaviour the value is written out, so the
//! config does not depend on our defaults.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use coconut_trainer::RunConfig;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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
    let mut out = Toml::default();
    let mut notes = Vec::new();
    let mut note = |s: String| notes.push(s);

    // The method. `run.py` sets coconut = False when no_thoughts is set, and trains the
    // plain model on the Coconut layout when no flag is set.
    let flags =
        (args.bool("coconut")?, args.bool("cot")?, args.bool("no_thoughts")?, args.bool("no_cot")?);
    let flag_text = format!(
        "coconut: {}, cot: {}, no_thoughts: {}, no_cot: {}",
        py_bool(flags.0),
        py_bool(flags.1),
        py_bool(flags.2),
        py_bool(flags.3)
    );
    let mode = match flags {
        (true, false, false, false) => {
            note(format!("{flag_text} -> curriculum.mode = \"coconut\""));
            "coconut"
        }
        (false, true, false, false) => {
            note(format!("{flag_text} -> curriculum.mode = \"cot\""));
            "cot"
        }
        (false, false, false, true) => {
            note(format!("{flag_text} -> curriculum.mode = \"no-cot\""));
            "no-cot"
        }
        (coconut, false, true, false) => {
            let also = if coconut {
                " (run.py sets coconut to False when no_thoughts is set)"
            } else {
                ""
            };
            note(format!("{flag_text} -> curriculum.mode = \"no-thoughts\"{also}"));
            "no-thoughts"
        }
        (false, false, false, false) => {
            note(format!(
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
    let thoughts = matches!(mode, "coconut" | "pause-as-thought");
    if !thoughts {
        note(
            "the official code adds no latent token in this mode; ours adds <|start-latent|>, \
             <|end-latent|>, <|latent|> and <pause> to every model (rows copied from `<<`, never \
             fed), so the softmax has 4 more entries"
                .to_string(),
        );
    }

    // Top level.
    let name = args.string("name")?;
    out.top("name", s(&name));
    note(format!("name: {name} -> name"));
    let save_path = args.string("save_path")?;
    out.top("output_dir", s(&save_path));
    note(format!(
        "save_path: {save_path} -> output_dir (the run folder is <output_dir>/<name>, as official){}",
        placeholder(&save_path)
    ));

    // [data]
    let train_path = args.string("train_path")?;
    let val_path = args.string("val_path")?;
    out.key("data", "train", s(&train_path));
    out.key("data", "valid", s(&val_path));
    note(format!(
        "train_path: {train_path} -> data.train, val_path: {val_path} -> data.valid (kept as \
         written, relative to the working directory; the official data files live in the \
         official repository's data/ folder, ProsQA as published, GSM8k and ProntoQA made by its \
         preprocessing/ scripts; our loader reads that JSON as it is)"
    ));
    let debug = args.bool("debug")?;
    let (max_train, max_valid) = if debug { (5000, 32) } else { (0, 0) };
    out.key("data", "max_train_samples", int(max_train));
    out.key("data", "max_valid_samples", int(max_valid));
    if debug {
        note(
            "debug: True -> data.max_train_samples = 5000, data.max_valid_samples = 32 (official \
             debug runs use those subsets and also skip wandb and checkpoint saving; ours still \
             saves checkpoints)"
                .to_string(),
        );
    } else {
        note(
            "debug: False -> dropped (it only turns wandb off and takes data subsets); \
              data.max_train_samples = 0 and data.max_valid_samples = 0 (all samples)"
                .to_string(),
        );
    }

    // [model]
    let model_id = args.string("model_id")?;
    let model_dir = match &options.model_dir {
        Some(dir) => dir.clone(),
        None => {
            let last = model_id.rsplit('/').next().unwrap_or(&model_id);
            Path::new("models").join(last)
        }
    };
    let model_dir_text = model_dir.display().to_string();
    out.key("model", "pretrained", s(&model_dir_text));
    note(format!(
        "model_id: {model_id} -> model.pretrained = \"{model_dir_text}\": an HF folder \
         (config.json, model.safetensors, tokenizer.json) must be there; get it where a model \
         hub is reachable, for example `huggingface-cli download {model_id} --local-dir \
         {model_dir_text}`{}",
        if options.model_dir.is_some() {
            " (folder from --model-dir)"
        } else {
            " (--model-dir sets another folder)"
        }
    ));
    if !model_id.to_lowercase().contains("gpt2") {
        note(format!(
            "model_id: {model_id} does not look like a GPT-2; ours trains GPT-2 models only, so \
             loading that folder will fail unless it holds a GPT-2"
        ));
    }
    out.key("model", "latent_init_token", s("<<"));
    note("the new token rows start as a copy of `<<`, as in run.py -> model.latent_init_token = \"<<\""
        .to_string());
    let load_model_path = args.optional_string("load_model_path")?;
    match load_model_path.as_deref() {
        None | Some("None") => {
            let shown = load_model_path.as_deref().unwrap_or("null");
            note(format!(
                "load_model_path: {shown} -> no model.init_checkpoint (the run starts from model_id)"
            ));
        }
        Some(ckpt) => {
            let dir = match &options.init_checkpoint {
                Some(dir) => dir.clone(),
                None => Path::new("converted").join(converted_name(ckpt)),
            };
            let dir_text = dir.display().to_string();
            out.key("model", "init_checkpoint", s(&dir_text));
            note(format!(
                "load_model_path: {ckpt} -> model.init_checkpoint = \"{dir_text}\": an official \
                 checkpoint (a torch.save'd state dict) must first be converted into that HF \
                 folder: `python3 scripts/convert_official_checkpoint.py {ckpt} --base \
                 {model_dir_text} --out {dir_text}`{}{}",
                if options.init_checkpoint.is_some() {
                    " (folder from --init-checkpoint)"
                } else {
                    " (--init-checkpoint sets another folder)"
                },
                placeholder(ckpt)
            ));
        }
    }

    // [curriculum]
    out.key("curriculum", "mode", s(mode));
    let c_thought = args.usize("c_thought")?;
    out.key("curriculum", "c_thought", int(c_thought));
    let unused = if thoughts { "" } else { " (unused in this mode)" };
    let forced = if mode == "no-thoughts" { "; run.py sets it to 0 for no_thoughts" } else { "" };
    note(format!("c_thought: {c_thought} -> curriculum.c_thought{unused}{forced}"));
    let epochs_per_stage = args.usize("epochs_per_stage")?;
    out.key("curriculum", "epochs_per_stage", int(epochs_per_stage));
    note(format!("epochs_per_stage: {epochs_per_stage} -> curriculum.epochs_per_stage"));
    let max_latent_stage = args.usize("max_latent_stage")?;
    out.key("curriculum", "max_latent_stage", int(max_latent_stage));
    note(format!("max_latent_stage: {max_latent_stage} -> curriculum.max_latent_stage"));
    let pad = args.bool("pad_latent_to_max")?;
    out.key("curriculum", "pad_latent_to_max", toml::Value::Boolean(pad));
    note(format!(
        "pad_latent_to_max: {} -> curriculum.pad_latent_to_max = {pad} (written out: our default is false)",
        py_bool(pad)
    ));
    let uniform_prob = args.float("uniform_prob")?;
    out.key("curriculum", "uniform_prob", toml::Value::Float(uniform_prob));
    note(format!("uniform_prob: {uniform_prob} -> curriculum.uniform_prob"));

    // [train]
    let num_epochs = args.usize("num_epochs")?;
    out.key("train", "num_epochs", int(num_epochs));
    note(format!("num_epochs: {num_epochs} -> train.num_epochs"));
    let batch = args.usize("batch_size_training")?;
    out.key("train", "batch_size", int(batch));
    let accum = args.usize("gradient_accumulation_steps")?;
    let (gpus, gpus_from) = match (options.gpus, needed_gpus(text)) {
        (Some(n), _) => (n, "--gpus".to_string()),
        (None, Some(n)) => (n, format!("the file's `# need {n} gpus` comment; --gpus overrides")),
        (None, None) => (1, "no GPU count in the file, so 1; --gpus N sets it".to_string()),
    };
    if gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    out.key("train", "grad_accum", int(accum * gpus));
    note(format!(
        "batch_size_training: {batch} -> train.batch_size = {batch}, gradient_accumulation_steps: \
         {accum} -> train.grad_accum = {accum} x {gpus} GPUs = {} ({gpus} GPUs from {gpus_from}): \
         batch_size_training is per GPU, so one optimizer step sees {} samples as in the official run",
        accum * gpus,
        batch * accum * gpus
    ));
    let lr = args.float("lr")?;
    out.key("train", "lr", toml::Value::Float(lr));
    note(format!("lr: {lr:e} -> train.lr (constant, no schedule, as official)"));
    let weight_decay = args.float("weight_decay")?;
    out.key("train", "weight_decay", toml::Value::Float(weight_decay));
    note(format!(
        "weight_decay: {weight_decay} -> train.weight_decay (ours decays 2-D weights only; \
         torch's AdamW in run.py also decays biases and layer norms)"
    ));
    out.key(
        "train",
        "betas",
        toml::Value::Array(vec![toml::Value::Float(0.9), toml::Value::Float(0.999)]),
    );
    out.key("train", "eps", toml::Value::Float(1e-8));
    note(
        "train.betas = [0.9, 0.999], train.eps = 1e-8: torch AdamW's defaults, which run.py uses"
            .to_string(),
    );
    let reset = args.bool("reset_optimizer")?;
    let reset_value = if reset { "epoch" } else { "never" };
    out.key("train", "optimizer_reset", s(reset_value));
    note(if reset {
        "reset_optimizer: True -> train.optimizer_reset = \"epoch\": run.py builds a new AdamW at \
         the start of every epoch, not only at stage switches"
            .to_string()
    } else {
        "reset_optimizer: False -> train.optimizer_reset = \"never\": run.py keeps one AdamW for \
         the whole run"
            .to_string()
    });
    out.key("train", "group_by_length", toml::Value::Boolean(false));
    note("train.group_by_length = false: official batches are plain shuffled draws".to_string());
    let seed = args.usize("seed")?;
    out.key("train", "seed", int(seed));
    note(format!(
        "seed: {seed} -> train.seed (our random streams are not PyTorch's: data order and \
         dropout differ from an official run with the same seed)"
    ));
    out.key("train", "device", s("cuda:0"));
    note(format!(
        "train.device = \"cuda:0\": the official runs are GPU runs (torchrun over {gpus} GPU(s)); \
         ours trains on one device"
    ));
    let bf16 = args.bool("bf16")?;
    out.key("train", "bf16", toml::Value::Boolean(bf16));
    note(format!(
        "bf16: {} -> train.bf16 = {bf16}{}",
        py_bool(bf16),
        if bf16 {
            " (run.py casts the whole model to bf16; ours computes in bf16 with f32 master weights)"
        } else {
            ""
        }
    ));
    out.key("train", "save_every_steps", int(0));
    out.key("train", "keep_last", int(0));
    let save_only_improve = args.bool("save_only_improve")?;
    out.key("train", "save_only_improve", toml::Value::Boolean(save_only_improve));
    note(format!(
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
    out.key("train", "resume", toml::Value::Boolean(true));
    let resume = args.usize("resume")?;
    let only_eval = args.bool("only_eval")?;
    if resume > 0 {
        out.key("train", "start_epoch", int(resume));
        let skip_note = if load_model_path.as_deref().is_none_or(|p| p == "None") {
            " (run.py warns that skipping epochs without load_model_path is not an intended use)"
        } else {
            ""
        };
        note(format!(
            "resume: {resume} -> train.start_epoch = {resume}: the first {resume} epochs are \
             skipped, as official{skip_note}; train.resume = true: like run.py, a run folder that \
             already holds checkpoints resumes from its newest one"
        ));
    } else {
        note(
            "resume: 0 -> no train.start_epoch; train.resume = true: like run.py, a run folder \
             that already holds checkpoints resumes from its newest one"
                .to_string(),
        );
    }
    if only_eval {
        let stage =
            if matches!(mode, "cot" | "no-cot") { 0 } else { resume / epochs_per_stage.max(1) };
        note(format!(
            "only_eval: True -> nothing to train: this config still describes the run; evaluate \
             the converted checkpoint on val_path with `coconut eval --config <this file> \
             --checkpoint <converted folder> --split valid --stage {stage}` (stage {stage} is \
             that of epoch resume = {resume}, which run.py evaluates)"
        ));
    } else {
        note("only_eval: False -> dropped (training run)".to_string());
    }

    // Dropped.
    match args.optional_string("project")? {
        Some(p) => note(format!(
            "project: {p} -> dropped (wandb project; ours logs to <run>/metrics.jsonl)"
        )),
        None => note("project: absent (wandb only)".to_string()),
    }

    // [eval]
    let max_new_tokens = if val_path.contains("gsm") { 64 } else { 128 };
    out.key("eval", "max_new_tokens", int(max_new_tokens));
    out.key("eval", "every_epoch", toml::Value::Boolean(true));
    note(format!(
        "eval.max_new_tokens = {max_new_tokens}: run.py decodes 64 new tokens when val_path \
         contains \"gsm\", else 128; eval.every_epoch = true: run.py evaluates after every epoch"
    ));

    let header = format!(
        "# Imported by `coconut import-config` from {}, an args file of the official Coconut\n\
         # repository. Every key of that file is accounted for in the notes the command printed.\n",
        path.file_name().map_or(file.clone(), |n| n.to_string_lossy().into_owned())
    );
    let toml = header + &out.render();
    RunConfig::parse(&toml, path)
        .with_context(|| format!("{file}: the imported config is not a valid run config"))?;
    Ok(Imported { toml, notes })
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

fn s(v: &str) -> toml::Value {
    toml::Value::String(v.to_string())
}

fn int(v: usize) -> toml::Value {
    toml::Value::Integer(v as i64)
}

/// `key = value` lines of one table.
type Entries = Vec<(&'static str, toml::Value)>;

/// The TOML being written: top-level keys, then one table per section in a fixed order.
#[derive(Default)]
struct Toml {
    top: Entries,
    /// Keyed by the index in [`SECTIONS`].
    sections: BTreeMap<usize, Entries>,
}

const SECTIONS: [&str; 5] = ["data", "model", "curriculum", "train", "eval"];

impl Toml {
    fn top(&mut self, key: &'static str, value: toml::Value) {
        self.top.push((key, value));
    }

    fn key(&mut self, section: &'static str, key: &'static str, value: toml::Value) {
        let index = SECTIONS.iter().position(|&s| s == section).expect("a known section");
        self.sections.entry(index).or_default().push((key, value));
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for (key, value) in &self.top {
            let _ = writeln!(text, "{key} = {value}");
        }
        for (index, keys) in &self.sections {
            let _ = writeln!(text, "\n[{}]", SECTIONS[*index]);
            for (key, value) in keys {
                let _ = writeln!(text, "{key} = {value}");
            }
        }
        text
    }
}

/// One scalar of the YAML mapping, with what decides its type.
#[derive(Debug)]
struct Scalar {
    value: String,
    style: TScalarStyle,
    tag: Option<Tag>,
    line: usize,
}

/// A resolved YAML value, with the YAML 1.1 rules of PyYAML's `safe_load` (which run.py
/// uses): `True`/`False`/`yes`/`no`/`on`/`off` are booleans, `None` is a string, `null` and
/// `~` are null, `!!float "1e-4"` is a float.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
        }
    }
}

/// The flat mapping of an official args file.
struct Args {
    file: String,
    values: BTreeMap<String, (Value, usize)>,
}

#[derive(Default)]
struct Events(Vec<(Event, Marker)>);

impl MarkedEventReceiver for Events {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        self.0.push((ev, mark));
    }
}

impl Args {
    /// Parses `text`, checks the key set and resolves every value.
    fn read(text: &str, file: &str) -> Result<Self> {
        let mut events = Events::default();
        Parser::new_from_str(text)
            .load(&mut events, true)
            .map_err(|e| anyhow::anyhow!("{file}: not valid YAML: {e}"))?;
        let mut it = events
            .0
            .into_iter()
            .filter(|(e, _)| !matches!(e, Event::StreamStart | Event::StreamEnd | Event::Nothing));
        let not_mapping = || anyhow::anyhow!("{file}: expected one mapping of `key: value` lines");
        match it.next() {
            Some((Event::DocumentStart, _)) => {}
            _ => return Err(not_mapping()),
        }
        match it.next() {
            Some((Event::MappingStart(..), _)) => {}
            _ => return Err(not_mapping()),
        }
        let mut values = BTreeMap::new();
        loop {
            let (key, mark) = match it.next() {
                Some((Event::MappingEnd, _)) => break,
                Some((Event::Scalar(key, ..), mark)) => (key, mark),
                Some((_, mark)) => {
                    bail!("{file}:{}: keys must be plain words", mark.line())
                }
                None => return Err(not_mapping()),
            };
            let scalar = match it.next() {
                Some((Event::Scalar(value, style, _, tag), mark)) => {
                    Scalar { value, style, tag, line: mark.line() }
                }
                Some((_, mark)) => bail!(
                    "{file}:{}: key `{key}` has a nested value or an alias; the official args \
                     are flat `key: value` lines",
                    mark.line()
                ),
                None => return Err(not_mapping()),
            };
            let value = resolve(&scalar)
                .map_err(|m| anyhow::anyhow!("{file}:{}: key `{key}`: {m}", scalar.line))?;
            if values.insert(key.clone(), (value, scalar.line)).is_some() {
                bail!("{file}:{}: key `{key}` is given twice", mark.line());
            }
        }
        match it.next() {
            Some((Event::DocumentEnd, _)) => {}
            _ => return Err(not_mapping()),
        }
        if let Some((_, mark)) = it.next() {
            bail!("{file}:{}: a second YAML document; an args file holds one", mark.line());
        }

        let unknown: Vec<String> = values
            .keys()
            .filter(|k| !OFFICIAL_KEYS.contains(&k.as_str()))
            .map(|k| format!("`{k}`"))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "{file}: unknown key(s) {}: not an argument of the official run.py (its keys: {})",
                unknown.join(", "),
                OFFICIAL_KEYS.join(", ")
            );
        }
        let missing: Vec<String> = OFFICIAL_KEYS
            .iter()
            .filter(|k| !OPTIONAL_KEYS.contains(k) && !values.contains_key(**k))
            .map(|k| format!("`{k}`"))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{file}: missing key(s) {}: run.py reads them, and guessing them here would hide \
                 a difference",
                missing.join(", ")
            );
        }
        Ok(Self { file: file.to_string(), values })
    }

    fn get(&self, key: &str) -> (&Value, usize) {
        let (v, line) = self.values.get(key).expect("required keys are checked at read");
        (v, *line)
    }

    fn wrong(&self, key: &str, line: usize, want: &str, got: &Value) -> anyhow::Error {
        anyhow::anyhow!("{}:{line}: key `{key}` must be {want}, not {}", self.file, got.kind())
    }

    fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            (Value::Bool(b), _) => Ok(*b),
            (v, line) => Err(self.wrong(key, line, "True or False", v)),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            (Value::Int(i), line) => usize::try_from(*i).map_err(|_| {
                anyhow::anyhow!("{}:{line}: key `{key}` must not be negative ({i})", self.file)
            }),
            (v, line) => Err(self.wrong(key, line, "an integer", v)),
        }
    }

    fn float(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            (Value::Float(f), _) => Ok(*f),
            (Value::Int(i), _) => Ok(*i as f64),
            (v, line) => Err(self.wrong(key, line, "a number (for example !!float \"1e-4\")", v)),
        }
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.get(key) {
            (Value::Str(s), _) => Ok(s.clone()),
            (v, line) => Err(self.wrong(key, line, "a string", v)),
        }
    }

    /// A string, or `None` for an absent key or a null value.
    fn optional_string(&self, key: &str) -> Result<Option<String>> {
        match self.values.get(key) {
            None | Some((Value::Null, _)) => Ok(None),
            Some((Value::Str(s), _)) => Ok(Some(s.clone())),
            Some((v, line)) => Err(self.wrong(key, *line, "a string", v)),
        }
    }
}

/// Resolves one scalar as PyYAML's `safe_load` would (a number PyYAML reads as a string
/// only for want of a dot, such as `1e-4`, is read as the number that was meant).
fn resolve(scalar: &Scalar) -> Result<Value, String> {
    let v = scalar.value.as_str();
    if let Some(tag) = &scalar.tag {
        let suffix = match tag.handle.as_str() {
            "tag:yaml.org,2002:" | "!!" => tag.suffix.as_str(),
            _ => return Err(format!("unsupported tag {}{}", tag.handle, tag.suffix)),
        };
        return match suffix {
            "float" => parse_float(v).map(Value::Float).ok_or(format!("{v:?} is not a float")),
            "int" => parse_int(v).map(Value::Int).ok_or(format!("{v:?} is not an integer")),
            "bool" => parse_bool(v).map(Value::Bool).ok_or(format!("{v:?} is not a boolean")),
            "str" => Ok(Value::Str(v.to_string())),
            "null" => Ok(Value::Null),
            other => Err(format!("unsupported tag !!{other}")),
        };
    }
    if scalar.style != TScalarStyle::Plain {
        return Ok(Value::Str(v.to_string()));
    }
    if matches!(v, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if let Some(b) = parse_bool(v) {
        return Ok(Value::Bool(b));
    }
    if let Some(i) = parse_int(v) {
        return Ok(Value::Int(i));
    }
    if let Some(f) = parse_float(v) {
        return Ok(Value::Float(f));
    }
    Ok(Value::Str(v.to_string()))
}

/// YAML 1.1 booleans.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// Decimal integers with an optional sign and `_` separators.
fn parse_int(v: &str) -> Option<i64> {
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    v.replace('_', "").parse().ok()
}

/// Decimal floats (`0.01`, `1e-4`, `1.0e-4`, `.5`) and YAML's `.inf` / `.nan`.
fn parse_float(v: &str) -> Option<f64> {
    let t = v.replace('_', "");
    let lower = t.to_lowercase();
    let body = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    if body == ".inf" {
        return Some(if lower.starts_with('-') { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if body == ".nan" {
        return Some(f64::NAN);
    }
    // Only digits, one dot and an exponent: Rust's parser also takes `inf` and `nan`.
    if !body.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '+' | '-'))
        || !body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    t.parse().ok()
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
        assert!(
            c.train.bf16 == Some(false) && !c.train.save_only_improve && !c.train.group_by_length
        );
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

    #[test]
    fn yaml_values_resolve_as_pyyaml_does() {
        let scalar = |value: &str, style, tag: Option<(&str, &str)>| Scalar {
            value: value.into(),
            style,
            tag: tag.map(|(h, s)| Tag { handle: h.into(), suffix: s.into() }),
            line: 1,
        };
        let plain = |v: &str| resolve(&scalar(v, TScalarStyle::Plain, None)).unwrap();
        assert_eq!(plain("False"), Value::Bool(false));
        assert_eq!(plain("yes"), Value::Bool(true));
        assert_eq!(plain("None"), Value::Str("None".into()));
        assert_eq!(plain("~"), Value::Null);
        assert_eq!(plain("32"), Value::Int(32));
        assert_eq!(plain("0.01"), Value::Float(0.01));
        assert_eq!(plain("1e-4"), Value::Float(1e-4));
        assert_eq!(plain("inf"), Value::Str("inf".into()));
        assert_eq!(plain("openai-community/gpt2"), Value::Str("openai-community/gpt2".into()));
        let quoted = resolve(&scalar("1e-4", TScalarStyle::DoubleQuoted, None)).unwrap();
        assert_eq!(quoted, Value::Str("1e-4".into()));
        let tagged =
            scalar("1e-4", TScalarStyle::DoubleQuoted, Some(("tag:yaml.org,2002:", "float")));
        assert_eq!(resolve(&tagged).unwrap(), Value::Float(1e-4));
        assert!(resolve(&scalar("x", TScalarStyle::Plain, Some(("!", "custom")))).is_err());
        // The official files' own spelling, through the parser.
        let path = official_dir().join("prosqa_coconut.yaml");
        let args = Args::read(&std::fs::read_to_string(&path).unwrap(), "f.yaml").unwrap();
        assert_eq!(args.get("lr").0, &Value::Float(1e-4));
        assert_eq!(args.get("load_model_path").0, &Value::Str("None".into()));
        assert_eq!(args.get("only_eval").0, &Value::Bool(false));
    }
}
