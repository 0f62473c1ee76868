//! `compare`: Coconut against chain of thought, answering directly and the paper's ablations,
//! each trained on the same data, model and epochs, over several seeds; and the Coconut
//! model evaluated with fewer thoughts than it was trained with.
//!
//! Writes `<output_dir>/<name>-comparison/`: `comparison.md` (mean and standard deviation
//! per method, every seed's figure, the thought-count ablation), `comparison.json` and
//! `accuracy.svg`. A run whose folder already holds its summary under the same config is
//! read, not trained again, so an interrupted comparison continues where it stopped.
//!
//! With `--jobs N`, N runs train at once, each in a process of its own with the cores shared
//! out: a small model does not keep many cores busy (docs/BENCHMARKS.md, "Data-parallel
//! training", has the figures).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use coconut_curriculum::{load_samples, tokenize_samples, Mode};
use coconut_eval::{evaluate, EvalMetrics, ThoughtDiagnostics, ThoughtStats};
use coconut_trainer::checkpoint::list_checkpoints;
use coconut_trainer::{load_model_dir, Ranks, RunConfig};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::report::Summary;
use crate::{data, run};

/// The methods `compare` trains unless `--methods` names others: the method, its two
/// baselines and the paper's two ablations of the thoughts.
const DEFAULT_METHODS: &str = "coconut,cot,no-cot,no-thoughts,pause-as-thought";

/// `coconut compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Run config (TOML); the embedded default when absent.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Train every method with seeds 0..N: seed s sets `train.seed` and, for generated
    /// data, the generator's seed (its files then go to `<folder>-seed<s>/`). Without it,
    /// one run each with the config's own seeds.
    #[arg(long)]
    pub seeds: Option<u64>,
    /// The methods, comma-separated (curriculum modes).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_METHODS)]
    pub methods: Vec<String>,
    /// Override a config key for every run, for example `--set train.num_epochs=4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Train this many runs at once, each in a process of its own with `train.threads` set
    /// to the cores shared out among them; its output goes to
    /// `<output_dir>/<name>-comparison/runs/<run>.log`.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

/// One trained run of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The seed of `train.seed` (and of the data, when generated).
    pub seed: u64,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The final model's figures on the test split (valid when there is none).
    pub metrics: EvalMetrics,
    /// Seconds of training and evaluation.
    pub wall_seconds: f64,
    /// The final model's thought diagnostics (none for methods without thoughts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thoughts: Option<ThoughtDiagnostics>,
}

/// Every run of one method, and their mean.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    /// The curriculum mode.
    pub method: Mode,
    /// One run per seed.
    pub runs: Vec<RunResult>,
    /// Mean accuracy over the seeds, in [0, 1].
    pub mean_accuracy: f64,
    /// Sample standard deviation of the accuracy (none with one seed).
    pub sd_accuracy: Option<f64>,
}

/// The Coconut model of one seed evaluated at every stage's number of thoughts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThoughtAblation {
    /// The seed of the run.
    pub seed: u64,
    /// The checkpoint evaluated.
    pub checkpoint: PathBuf,
    /// The figures at stage 0, 1, ..., `max_latent_stage`.
    pub by_stage: Vec<EvalMetrics>,
}

/// `comparison.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The config's name.
    pub name: String,
    /// The split every final model was evaluated on.
    pub split: String,
    /// Thoughts per stage of the Coconut runs.
    pub c_thought: usize,
    /// Per method, in the order asked.
    pub methods: Vec<MethodResult>,
    /// The thought-count ablation of every Coconut run.
    pub thought_ablation: Vec<ThoughtAblation>,
}

/// Trains every method of `args` for every seed, then writes and prints the comparison.
/// With `--jobs` above 1 the runs are children, this executable started as `coconut
/// train-all-stages`, so the caller is the `coconut` binary or one with the same command line.
pub fn run(args: &CompareArgs) -> Result<()> {
    let (mut config, config_path) = run::load_config(args.config.as_deref(), &args.overrides)?;
    let methods = parse_methods(&args.methods)?;
    let ranks = Arc::new(Ranks::from_launcher(config.device())?);
    config.train.device = ranks.device(config.device());
    let seeds: Vec<Option<u64>> = match args.seeds {
        Some(0) => bail!("--seeds must be at least 1"),
        Some(n) => (0..n).map(Some).collect(),
        None => vec![None],
    };
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if args.jobs > 1 && ranks.world_size() > 1 {
        bail!("--jobs trains runs side by side on one machine; it cannot share ranks with them");
    }
    // The output folder is checked writable before hours of training.
    let out = config.output_dir.join(format!("{}-comparison", config.name));
    if ranks.is_main() {
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        tempfile::NamedTempFile::new_in(&out)
            .with_context(|| format!("{} is not writable", out.display()))?;
    }

    let runs: Vec<(Option<u64>, Mode)> =
        seeds.iter().flat_map(|&seed| methods.iter().map(move |&method| (seed, method))).collect();
    if args.jobs > 1 {
        let configs: Vec<RunConfig> =
            runs.iter().map(|&(seed, method)| run_config(&config, method, seed)).collect();
        train_side_by_side(&configs, args.jobs, &out.join("runs"))?;
    }

    // Every run in order: trained here (unless trained side by side above), or read back.
    let mut results: Vec<MethodResult> = Vec::new();
    let mut ablations = Vec::new();
    for &(seed, method) in &runs {
        let c = run_config(&config, method, seed);
        let Some(run) = trained(c.clone(), &config_path, &ranks)? else { continue };
        if method == Mode::Coconut {
            ablations.push(thought_ablation(&c, &run)?);
        }
        match results.iter_mut().find(|m| m.method == method) {
            Some(m) => m.runs.push(run),
            None => results.push(MethodResult {
                method,
                runs: vec![run],
                mean_accuracy: 0.0,
                sd_accuracy: None,
            }),
        }
    }
    if !ranks.is_main() {
        return Ok(());
    }
    for m in &mut results {
        let accuracies: Vec<f64> = m.runs.iter().map(|r| r.metrics.accuracy).collect();
        (m.mean_accuracy, m.sd_accuracy) = mean_and_sd(&accuracies);
    }
    let split = if config.data.test.is_some() { "test" } else { "valid" };
    let comparison = Comparison {
        name: config.name.clone(),
        split: split.to_string(),
        c_thought: config.curriculum.c_thought,
        methods: results,
        thought_ablation: ablations,
    };
    let table = comparison_markdown(&comparison);
    run::write_file(&out.join("comparison.md"), &table)?;
    run::write_file(&out.join("comparison.json"), serde_json::to_string_pretty(&comparison)?)?;
    plot_accuracy(&out.join("accuracy.svg"), &comparison)?;
    println!("\n{table}\nwritten to {}", out.display());
    Ok(())
}

/// The curriculum modes named on the command line.
fn parse_methods(names: &[String]) -> Result<Vec<Mode>> {
    let mut methods = Vec::new();
    for name in names {
        let value = serde_json::Value::String(name.trim().to_string());
        let Ok(mode) = serde_json::from_value::<Mode>(value) else {
            bail!("--methods: unknown method `{name}` (known: {DEFAULT_METHODS}, pause-token, no-curriculum)")
        };
        if !methods.contains(&mode) {
            methods.push(mode);
        }
    }
    Ok(methods)
}

/// The config of one run: `config` with `method`'s mode and, when a seed is given, that
/// seed for training and for generated data (written beside the config's own data, in a
/// folder of its own, unless it is the config's seed).
pub fn run_config(config: &RunConfig, method: Mode, seed: Option<u64>) -> RunConfig {
    let mut c = config.clone();
    c.curriculum.mode = method;
    let mode_name = serde_json::to_value(method).ok().and_then(|v| v.as_str().map(String::from));
    let mode_name = mode_name.unwrap_or_else(|| format!("{method:?}"));
    let Some(seed) = seed else {
        c.name = format!("{}-{mode_name}", config.name);
        return c;
    };
    c.name = format!("{}-seed{seed}-{mode_name}", config.name);
    c.train.seed = seed;
    if let Some(generate) = &mut c.data.generate {
        if generate.seed != seed {
            generate.seed = seed;
            let data = &mut c.data;
            for path in [&mut data.train, &mut data.valid].into_iter().chain(data.test.as_mut()) {
                *path = in_seed_folder(path, seed);
            }
        }
    }
    c
}

/// `dir/file` as `dir-seed<s>/file`.
fn in_seed_folder(path: &Path, seed: u64) -> PathBuf {
    let file = path.file_name().unwrap_or_default();
    match path.parent().and_then(|dir| dir.file_name().map(|name| (dir, name))) {
        Some((dir, name)) => {
            dir.with_file_name(format!("{}-seed{seed}", name.to_string_lossy())).join(file)
        }
        None => PathBuf::from(format!("seed{seed}")).join(file),
    }
}

/// Trains the run of `config`, or reads it when its folder holds a summary written under
/// the same config. `None` on ranks other than the first, which write nothing.
fn trained(config: RunConfig, config_path: &Path, ranks: &Arc<Ranks>) -> Result<Option<RunResult>> {
    let seed = config.train.seed;
    let run_dir = config.run_dir();
    // Rank 0 decides, so that every rank trains or none does.
    let mut finished = vec![u8::from(ranks.is_main() && is_finished(&config))];
    ranks.broadcast(&mut finished)?;
    if finished[0] == 1 {
        println!("{}: already trained, its summary is read", run_dir.display());
    } else {
        run::train_all_stages(config, config_path, ranks)?;
    }
    if !ranks.is_main() {
        return Ok(None);
    }
    let path = run_dir.join("summary.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let summary: Summary =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(RunResult {
        seed,
        run_dir,
        metrics: summary.final_metrics,
        wall_seconds: summary.wall_seconds,
        thoughts: summary.final_thoughts,
    }))
}

/// Whether the run folder of `config` holds a finished run of this very config. The number
/// of threads it ran on is not part of a run's identity: it changes the speed, not the
/// experiment.
fn is_finished(config: &RunConfig) -> bool {
    let dir = config.run_dir();
    let path = dir.join("config.toml");
    let Some(mut written) =
        std::fs::read_to_string(&path).ok().and_then(|text| RunConfig::parse(&text, &path).ok())
    else {
        return false;
    };
    written.train.threads = config.train.threads;
    dir.join("summary.json").exists() && written == *config
}

/// Trains the runs of `configs` that are not finished, `jobs` at a time, each as
/// `coconut train-all-stages` in a process of its own with the cores shared out; their
/// configs and logs go to `logs_dir`. Every generated dataset is written first, so that two
/// runs of one seed never write the same files at once. Fails, naming each failed run and
/// its log, once the runs under way have ended (none is started after a failure). A log is
/// appended to, never replaced.
fn train_side_by_side(configs: &[RunConfig], jobs: usize, logs_dir: &Path) -> Result<()> {
    for config in configs {
        data::ensure_generated(config)?;
    }
    let mut pending: Vec<RunConfig> = configs.iter().filter(|c| !is_finished(c)).cloned().collect();
    if pending.is_empty() {
        return Ok(());
    }
    let jobs = jobs.min(pending.len());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / jobs).max(1);
    for config in &mut pending {
        config.train.threads = threads;
    }
    std::fs::create_dir_all(logs_dir)
        .with_context(|| format!("creating {}", logs_dir.display()))?;
    let exe = std::env::current_exe().context("finding the coconut binary to start runs with")?;
    println!(
        "training {} runs, {jobs} at a time, each with train.threads = {threads}",
        pending.len()
    );

    struct Running {
        name: String,
        log: PathBuf,
        child: Child,
        started: Instant,
        /// The kernel's out-of-memory kills before it started (see `child::failure`).
        oom_before: Option<u64>,
    }
    let mut queue = pending.into_iter();
    let mut running: Vec<Running> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    loop {
        while running.len() < jobs && failed.is_empty() {
            let Some(config) = queue.next() else { break };
            let config_file = logs_dir.join(format!("{}.toml", config.name));
            std::fs::write(&config_file, toml::to_string_pretty(&config)?)
                .with_context(|| format!("writing {}", config_file.display()))?;
            let log = logs_dir.join(format!("{}.log", config.name));
            // Appended to: a resumed run keeps the log of its interrupted start.
            let out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("opening {}", log.display()))?;
            let oom_before = crate::child::oom_kills();
            let child = Command::new(&exe)
                .arg("train-all-stages")
                .arg("--config")
                .arg(&config_file)
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {} for {}", exe.display(), config.name))?;
            println!("{}: started (log {})", config.name, log.display());
            let started = Instant::now();
            running.push(Running { name: config.name, log, child, started, oom_before });
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for mut run in running {
            match run.child.try_wait() {
                Ok(None) => still.push(run),
                Ok(Some(status)) if status.success() => {
                    let minutes = run.started.elapsed().as_secs_f64() / 60.0;
                    println!("{}: trained in {minutes:.1} min", run.name);
                }
                Ok(Some(status)) => {
                    let how = crate::child::failure(status, run.oom_before);
                    failed.push(format!("{} ({how}; see {})", run.name, run.log.display()))
                }
                Err(e) => failed.push(format!("{} ({e}; see {})", run.name, run.log.display())),
            }
        }
        running = still;
    }
    if !failed.is_empty() {
        bail!("runs failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The newest checkpoint of a Coconut run evaluated at stages 0..=`max_latent_stage`, on
/// the split of its final evaluation; kept in `<run>/thought_ablation.json` and read from
/// there while the checkpoint is the same.
fn thought_ablation(config: &RunConfig, run: &RunResult) -> Result<ThoughtAblation> {
    let Some(checkpoint) = list_checkpoints(&run.run_dir.join("checkpoints")).pop() else {
        bail!("{} holds no checkpoint to evaluate with fewer thoughts", run.run_dir.display())
    };
    let kept = run.run_dir.join("thought_ablation.json");
    let earlier: Option<ThoughtAblation> =
        std::fs::read_to_string(&kept).ok().and_then(|text| serde_json::from_str(&text).ok());
    if let Some(earlier) = earlier.filter(|e| e.checkpoint == checkpoint) {
        return Ok(earlier);
    }
    let data = config.data.test.as_ref().unwrap_or(&config.data.valid);
    let samples = load_samples(data)?;
    let loaded = load_model_dir(&checkpoint, config.device(), &config.model.latent_init_token)?;
    let tokenized = tokenize_samples(&loaded.tokenizer, &samples);
    let mut by_stage = Vec::new();
    for stage in 0..=config.curriculum.max_latent_stage {
        let options = crate::run::eval_options(config, stage);
        let model = loaded.model.as_ref();
        let (metrics, _) =
            evaluate(model, &loaded.tokenizer, &config.curriculum, &samples, &tokenized, &options);
        by_stage.push(metrics);
    }
    let ablation = ThoughtAblation { seed: run.seed, checkpoint, by_stage };
    std::fs::write(&kept, serde_json::to_string_pretty(&ablation)?)
        .with_context(|| format!("writing {}", kept.display()))?;
    Ok(ablation)
}

/// The mean and the sample standard deviation (none for fewer than two values).
pub fn mean_and_sd(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let sd = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, sd)
}

/// `comparison.md`: the methods' table and the thought-count ablation.
fn comparison_markdown(c: &Comparison) -> String {
    let seeds: Vec<u64> =
        c.methods.first().map_or(Vec::new(), |m| m.runs.iter().map(|r| r.seed).collect());
    let seed_columns: String = seeds.iter().map(|s| format!(" seed {s} |")).collect();
    let mut out = format!(
        "Final accuracy % on the {} split (mean ± sample sd over seeds).\n\n\
         | method | accuracy % |{seed_columns} # tokens | minutes per run |\n\
         |---|---|{}---|---|\n",
        c.split,
        "---|".repeat(seeds.len())
    );
    for m in &c.methods {
        let n = m.runs.len().max(1) as f64;
        let tokens = m.runs.iter().map(|r| r.metrics.mean_tokens).sum::<f64>() / n;
        let minutes = m.runs.iter().map(|r| r.wall_seconds).sum::<f64>() / n / 60.0;
        let per_seed: String =
            m.runs.iter().map(|r| format!(" {:.1} |", 100.0 * r.metrics.accuracy)).collect();
        out.push_str(&format!(
            "| {} | {} |{per_seed} {tokens:.1} | {minutes:.1} |\n",
            method_label(m.method),
            percent_with_sd(m.mean_accuracy, m.sd_accuracy),
        ));
    }
    out.push_str(&diagnostics_table(c));
    if let Some(first) = c.thought_ablation.first() {
        let stages = first.by_stage.len();
        let header: String = (0..stages).map(|k| format!(" {} |", k * c.c_thought)).collect();
        out.push_str(&format!(
            "\nThe Coconut model evaluated with fewer thoughts (accuracy %).\n\n\
             | thoughts |{header}\n|---|{}\n",
            "---|".repeat(stages)
        ));
        for a in &c.thought_ablation {
            let cells: String =
                a.by_stage.iter().map(|m| format!(" {:.1} |", 100.0 * m.accuracy)).collect();
            out.push_str(&format!("| seed {} |{cells}\n", a.seed));
        }
        if c.thought_ablation.len() > 1 {
            let cells: String = (0..stages)
                .map(|k| {
                    let values: Vec<f64> = c
                        .thought_ablation
                        .iter()
                        .filter_map(|a| a.by_stage.get(k).map(|m| m.accuracy))
                        .collect();
                    let (mean, sd) = mean_and_sd(&values);
                    format!(" {} |", percent_with_sd(mean, sd))
                })
                .collect();
            out.push_str(&format!("| mean |{cells}\n"));
        }
    }
    out
}

/// The thoughts of every run's final model, thought by thought (`a / b / ...`): empty when
/// no method has thoughts.
fn diagnostics_table(c: &Comparison) -> String {
    let rows: Vec<(&MethodResult, &RunResult, &ThoughtDiagnostics)> = (c.methods.iter())
        .flat_map(|m| m.runs.iter().filter_map(move |r| Some((m, r, r.thoughts.as_ref()?))))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nThe final models' thoughts, one value per thought (see the runs' reports): the norm \
         over the mean norm of the token embeddings, the mean cosine similarity of a thought \
         between two questions (near 1: a collapse), and the LM head's entropy in nats.\n\n\
         | method | seed | accuracy % | norm / embedding norm | cosine across questions | entropy |\n\
         |---|---|---|---|---|---|\n",
    );
    let join = |d: &ThoughtDiagnostics, f: &dyn Fn(&ThoughtStats) -> Option<f64>| {
        let cells: Vec<String> = (d.thoughts.iter())
            .map(|t| f(t).map_or("-".to_string(), |v| format!("{v:.2}")))
            .collect();
        cells.join(" / ")
    };
    for (m, r, d) in rows {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {} |\n",
            method_label(m.method),
            r.seed,
            100.0 * r.metrics.accuracy,
            join(d, &|t| Some(t.norm_mean / d.embedding_norm)),
            join(d, &|t| t.cosine_across_questions),
            join(d, &|t| Some(t.entropy)),
        ));
    }
    out
}

/// `81.3 ± 1.2`, or `81.3` without a deviation.
fn percent_with_sd(mean: f64, sd: Option<f64>) -> String {
    match sd {
        Some(sd) => format!("{:.1} ± {:.1}", 100.0 * mean, 100.0 * sd),
        None => format!("{:.1}", 100.0 * mean),
    }
}

/// The paper's name of a method.
fn method_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Coconut => "Coconut",
        Mode::Cot => "CoT",
        Mode::NoCot => "No-CoT",
        Mode::NoThoughts => "w/o thought",
        Mode::PauseAsThought => "pause as thought",
        Mode::PauseToken => "pause token",
        Mode::NoCurriculum => "w/o curriculum",
    }
}

/// `accuracy.svg`: one bar per method at its mean accuracy, the standard deviation as an
/// error bar and every seed's accuracy as a dot.
fn plot_accuracy(path: &Path, c: &Comparison) -> Result<()> {
    let root = SVGBackend::new(path, (140 + 110 * c.methods.len() as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels: Vec<&str> = c.methods.iter().map(|m| method_label(m.method)).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: {} accuracy %", c.name, c.split), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(40)
        .build_cartesian_2d((0..c.methods.len()).into_segmented(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).copied().unwrap_or_default().to_string(),
            _ => String::new(),
        })
        .draw()?;
    let colour = |i: usize| Palette99::pick(i).mix(0.8);
    chart.draw_series(c.methods.iter().enumerate().map(|(i, m)| {
        let (from, to) = (SegmentValue::Exact(i), SegmentValue::Exact(i + 1));
        let mut bar =
            Rectangle::new([(from, 0.0), (to, 100.0 * m.mean_accuracy)], colour(i).filled());
        bar.set_margin(0, 0, 12, 12);
        bar
    }))?;
    chart.draw_series(c.methods.iter().enumerate().filter_map(|(i, m)| {
        let (mean, sd) = (100.0 * m.mean_accuracy, 100.0 * m.sd_accuracy?);
        Some(ErrorBar::new_vertical(
            SegmentValue::CenterOf(i),
            mean - sd,
            mean,
            mean + sd,
            BLACK.stroke_width(2),
            12,
        ))
    }))?;
    chart.draw_series(c.methods.iter().enumerate().flat_map(|(i, m)| {
        m.runs.iter().map(move |r| {
            Circle::new((SegmentValue::CenterOf(i), 100.0 * r.metrics.accuracy), 3, BLACK.filled())
        })
    }))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_standard_deviation_divides_by_n_minus_one() {
        let (mean, sd) = mean_and_sd(&[0.80, 0.84, 0.88]);
        assert!((mean - 0.84).abs() < 1e-12);
        assert!((sd.unwrap() - 0.04).abs() < 1e-12);
        assert_eq!(mean_and_sd(&[0.5]), (0.5, None));
    }

    #[test]
    fn a_seed_moves_generated_data_into_a_folder_of_its_own() {
        let text = crate::DEFAULT_CONFIG;
        let config = RunConfig::parse(text, Path::new("configs/default.toml")).unwrap();
        let generated_seed = config.data.generate.as_ref().unwrap().seed;
        let own = run_config(&config, Mode::Cot, Some(generated_seed));
        assert_eq!(own.data.train, config.data.train);
        assert_eq!(own.train.seed, generated_seed);
        assert_eq!(own.curriculum.mode, Mode::Cot);

        let other = run_config(&config, Mode::Coconut, Some(generated_seed + 1));
        let folder = |p: &Path| p.parent().unwrap().to_path_buf();
        let expected =
            format!("{}-seed{}", folder(&config.data.train).display(), generated_seed + 1);
        assert_eq!(folder(&other.data.train), PathBuf::from(&expected));
        assert_eq!(folder(&other.data.valid), PathBuf::from(&expected));
        assert_eq!(other.data.train.file_name(), config.data.train.file_name());
        assert_eq!(other.data.generate.as_ref().unwrap().seed, generated_seed + 1);
        assert_eq!(other.train.seed, generated_seed + 1);
        assert_ne!(other.name, own.name);
    }

    #[test]
    fn methods_are_read_by_their_config_names() {
        let names = DEFAULT_METHODS.split(',').map(String::from).collect::<Vec<_>>();
        let modes = parse_methods(&names).unwrap();
        assert_eq!(modes[0], Mode::Coconut);
        assert_eq!(modes.len(), 5);
        let err = parse_methods(&["latent".to_string()]).unwrap_err().to_string();
        assert!(err.contains("unknown method `latent`"), "{err}");
    }
}
