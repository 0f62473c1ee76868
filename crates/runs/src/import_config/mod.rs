//! `coconut import-config`: an args YAML of the official Coconut repository (the file its
//! `run.py` reads) as one of our TOML run configs.
//!
//! Every key `run.py` and `dataset.py` read is mapped or dropped with a reason, one line per
//! decision on stderr; an unknown key, a missing key, a value of the wrong type or a mode
//! combination the official code does not define is an error naming the file and the key.
//! Where our defaults differ from the official behaviour the value is written out, so the
//! config does not depend on our defaults.

mod sections;
mod toml_out;
mod train;
mod yaml;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use coconut_trainer::RunConfig;

use sections::Import;
pub use sections::ImportOptions;
use toml_out::Toml;
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

#[cfg(test)]
mod tests {
    use super::sections::converted_name;
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
