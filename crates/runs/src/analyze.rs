//! `analyze`: the paper's latent-search analysis (its section 5) of a checkpoint on
//! ProsQA-format data: the value the model gives each node of a question's graph after k
//! continuous thoughts (or, for a CoT model, k language steps), aggregated into
//! `latent_search.json` and two plots. The definitions are in
//! `coconut_eval::latent_search`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use coconut_curriculum::{tokenize_samples, CurriculumConfig, Mode, Sample};
use coconut_eval::latent_search::{
    aggregate, node_values, GraphQuestion, ProsqaGraph, SearchFigures,
};
use coconut_trainer::checkpoint::{read_state, STATE_FILE};
use coconut_trainer::{device_name, load_model_dir, usable_device, LoadedModel};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// Arguments of `coconut analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// A checkpoint of a run (its run config says the mode and the curriculum).
    #[arg(long)]
    checkpoint: PathBuf,
    /// ProsQA-format samples with their graphs (default: the run's test split, else valid).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Analyse only the first N samples (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Where to write (default: `<run>/analysis/<checkpoint>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device to run the model on.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl AnalyzeArgs {
    /// The analysis of a run's final checkpoint on its evaluation data, written to `out`.
    pub fn for_run(checkpoint: &Path, data: &Path, out: &Path, device: tch::Device) -> Self {
        Self {
            checkpoint: checkpoint.to_path_buf(),
            data: Some(data.to_path_buf()),
            limit: 0,
            out: Some(out.to_path_buf()),
            device: device_name(device),
        }
    }
}

/// Whether a checkpoint of `mode` has thoughts or language steps to analyse.
fn analysable(mode: Mode) -> bool {
    matches!(mode, Mode::Coconut | Mode::NoCurriculum | Mode::Cot)
}

/// Whether `data` holds ProsQA graphs and the checkpoint's `mode` has thoughts or language
/// steps to analyse.
pub fn applies(data: &Path, mode: Mode) -> bool {
    analysable(mode)
        && std::fs::read_to_string(data)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<GraphSample>>(&t).ok())
            .is_some_and(|s| !s.is_empty())
}

/// One sample as the ProsQA file stores it: the text and the graph.
#[derive(Deserialize)]
struct GraphSample {
    question: String,
    steps: Vec<String>,
    answer: String,
    #[serde(flatten)]
    graph: ProsqaGraph,
}

/// What `latent_search.json` holds.
#[derive(Serialize)]
struct Analysis {
    checkpoint: String,
    data: String,
    mode: Mode,
    /// `thoughts` or `language steps`: what k counts.
    k_counts: &'static str,
    samples: usize,
    per_k: Vec<SearchFigures>,
}

/// Runs the analysis and writes `latent_search.json`, `latent_values.svg` and
/// `value_by_height.svg`; returns the output folder.
pub fn run(args: &AnalyzeArgs) -> Result<PathBuf> {
    let ckpt = &args.checkpoint;
    if !ckpt.join(STATE_FILE).exists() {
        bail!("{}: not a checkpoint of a run (no {STATE_FILE})", ckpt.display());
    }
    let config = read_state(ckpt)?.config;
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| config.data.test.clone().unwrap_or(config.data.valid.clone()));
    let samples = read_graph_samples(&data, args.limit)?;
    let device = usable_device(&args.device).map_err(anyhow::Error::msg)?;
    let loaded = load_model_dir(ckpt, device, &config.model.latent_init_token)?;
    let mode = config.curriculum.mode;
    if !analysable(mode) {
        bail!(
            "{}: a {mode:?} checkpoint has neither thoughts nor language steps to analyse",
            ckpt.display()
        );
    }
    let per_k = search_figures(&loaded, &config.curriculum, &samples, device);
    let out = args.out.clone().unwrap_or_else(|| default_output(ckpt));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let k_counts = if mode == Mode::Cot { "language steps" } else { "thoughts" };
    let analysis = Analysis {
        checkpoint: ckpt.display().to_string(),
        data: data.display().to_string(),
        mode,
        k_counts,
        samples: samples.len(),
        per_k,
    };
    crate::run::write_file(
        &out.join("latent_search.json"),
        serde_json::to_string_pretty(&analysis)?,
    )?;
    plot_values(&out.join("latent_values.svg"), &analysis)?;
    plot_heights(&out.join("value_by_height.svg"), &analysis)?;
    println!("{}", summary_table(&analysis));
    Ok(out)
}

/// The ProsQA-format samples of `data` (the first `limit`, all when 0), every node index
/// checked against the sample's names.
fn read_graph_samples(data: &Path, limit: usize) -> Result<Vec<GraphSample>> {
    let text =
        std::fs::read_to_string(data).with_context(|| format!("reading {}", data.display()))?;
    let mut samples: Vec<GraphSample> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not ProsQA-format data (each sample needs question, steps, answer, edges, \
             root, target, neg_target and idx_to_symbol)",
            data.display()
        )
    })?;
    if limit > 0 {
        samples.truncate(limit);
    }
    for (i, s) in samples.iter().enumerate() {
        let n = s.graph.idx_to_symbol.len();
        let bad = [s.graph.root, s.graph.target, s.graph.neg_target]
            .into_iter()
            .chain(s.graph.edges.iter().flatten().copied())
            .any(|v| v >= n);
        if bad {
            bail!(
                "{}: sample {i}: a node index is outside idx_to_symbol ({n} names)",
                data.display()
            );
        }
    }
    Ok(samples)
}

/// The figures of the search after each k thoughts (language steps for CoT), from 0 to
/// the most the curriculum gives (the longest chain of reasoning but one, for CoT).
fn search_figures(
    loaded: &LoadedModel,
    curriculum: &CurriculumConfig,
    samples: &[GraphSample],
    device: tch::Device,
) -> Vec<SearchFigures> {
    let mode = curriculum.mode;
    let plain: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            question: s.question.clone(),
            steps: s.steps.clone(),
            answer: s.answer.clone(),
        })
        .collect();
    let tokenized = tokenize_samples(&loaded.tokenizer, &plain);
    let max_k = match mode {
        Mode::Cot => samples.iter().map(|s| s.steps.len()).max().unwrap_or(0).saturating_sub(1),
        _ => curriculum.max_thoughts(),
    };
    let mut per_k = Vec::new();
    for k in 0..=max_k {
        // The step after k thoughts is step k of the sample's own reasoning.
        let values: Vec<_> = samples
            .iter()
            .zip(&tokenized)
            .filter(|(s, _)| s.steps.len() > k)
            .map(|(s, t)| {
                let model = loaded.model.as_ref();
                let question = GraphQuestion { sample: t, steps: &s.steps, graph: &s.graph };
                node_values(model, &loaded.tokenizer, mode, &question, k, device)
            })
            .collect();
        per_k.push(aggregate(k, &values));
    }
    per_k
}

/// `<run>/analysis/<checkpoint>` for a checkpoint of a run, `<folder>/analysis` otherwise.
fn default_output(ckpt: &Path) -> PathBuf {
    let parent = ckpt.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"));
    match (parent.and_then(Path::parent), ckpt.file_name()) {
        (Some(run), Some(name)) => run.join("analysis").join(name),
        _ => ckpt.join("analysis"),
    }
}

/// The figures of a `latent_search.json` as a Markdown table (also the report's section).
pub fn summary_table_of(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(table(&serde_json::from_str(&text)?))
}

fn summary_table(analysis: &Analysis) -> String {
    table(&serde_json::to_value(analysis).expect("the analysis serialises"))
}

fn table(json: &serde_json::Value) -> String {
    let mut md = format!(
        "| k ({}) | samples | frontier value | off frontier | on the path | top-1 | top-2 | top-3 |\n|---|---|---|---|---|---|---|---|\n",
        json["k_counts"].as_str().unwrap_or("thoughts")
    );
    for f in json["per_k"].as_array().into_iter().flatten() {
        let x = |key: &str| f[key].as_f64().unwrap_or(f64::NAN);
        let top = |i: usize| f["top_frontier_values"][i].as_f64().unwrap_or(f64::NAN);
        md += &format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            f["k"],
            f["samples"],
            x("frontier_value"),
            x("off_frontier_value"),
            x("path_value"),
            top(0),
            top(1),
            top(2)
        );
    }
    md
}

/// The frontier's values per k: the largest, second and third, the rest of the frontier,
/// and everything off it, side by side.
fn plot_values(path: &Path, a: &Analysis) -> Result<()> {
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = a.per_k.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("value of the graph's nodes after k {}", a.k_counts), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc(format!("k ({})", a.k_counts))
        .y_desc("mean probability")
        .draw()?;
    let colours = [RED, BLUE, GREEN, CYAN, RGBColor(150, 150, 150)];
    let labels =
        ["frontier top-1", "frontier top-2", "frontier top-3", "rest of frontier", "off frontier"];
    for (series, (colour, label)) in colours.into_iter().zip(labels).enumerate() {
        let bars = a.per_k.iter().map(|f| {
            let top = f.top_frontier_values;
            let value = match series {
                0..=2 => top[series],
                3 => (f.frontier_value - top.iter().sum::<f64>()).max(0.0),
                _ => f.off_frontier_value,
            };
            let x = f.k as f64 - 0.4 + 0.16 * series as f64;
            Rectangle::new([(x, 0.0), (x + 0.14, value)], colour.filled())
        });
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Mean value of frontier nodes against their height, on the path and off it, over every k.
fn plot_heights(path: &Path, a: &Analysis) -> Result<()> {
    let collect = |on_path: bool| {
        let mut by_height: std::collections::BTreeMap<usize, (f64, usize)> = Default::default();
        for f in &a.per_k {
            let m = if on_path { &f.value_by_height_on_path } else { &f.value_by_height_off_path };
            for (&h, &(mean, count)) in m {
                let e = by_height.entry(h).or_default();
                e.0 += mean * count as f64;
                e.1 += count;
            }
        }
        by_height.into_iter().map(|(h, (sum, n))| (h as f64, sum / n as f64)).collect::<Vec<_>>()
    };
    let (on, off) = (collect(true), collect(false));
    let max_h = on.iter().chain(&off).map(|p| p.0).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (600, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("frontier value against height", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..max_h + 0.5, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("height (shortest distance to a leaf)")
        .y_desc("mean value")
        .draw()?;
    for (points, colour, label) in
        [(on, RED, "on the path to the answer"), (off, BLUE, "off the path")]
    {
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], colour.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
