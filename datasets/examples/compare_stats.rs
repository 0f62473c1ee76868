//! Prints the statistics of generated data beside the released validation splits, and those
//! of the small presets.
//!
//! `cargo run --release -p coconut-datasets --example compare_stats [n_samples] [seed]`

use std::path::Path;
use std::time::Instant;

use coconut_datasets::{
    format_side_by_side, generate_distinct, DatasetConfig, DatasetKind, DatasetStats,
};

const REAL: [(DatasetKind, &str); 2] = [
    (
        DatasetKind::ProsQa,
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/datasets/prosqa/prosqa_valid.json"),
    ),
    (
        DatasetKind::ProntoQa,
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/datasets/prontoqa/prontoqa_valid.json"),
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let seed: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2024);
    for (kind, path) in REAL {
        let real = DatasetStats::from_file(Path::new(path))?;
        for (preset, cfg) in
            [("paper", DatasetConfig::paper(kind)), ("small", DatasetConfig::small(kind))]
        {
            let start = Instant::now();
            let samples = generate_distinct(&cfg, n, seed)?;
            let elapsed = start.elapsed();
            let ours = DatasetStats::from_samples(&samples);
            println!("{} {preset} preset: {n} samples in {elapsed:.2?}", kind.name());
            println!("{}", format_side_by_side(("real valid", &real), ("generated", &ours)));
        }
    }
    Ok(())
}
