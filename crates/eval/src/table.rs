//! Side-by-side tables of several evaluations, laid out like the paper's Table 1.

use serde::{Deserialize, Serialize};

use crate::metrics::EvalMetrics;

/// One row: a method (usually a checkpoint) and its figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    /// What is evaluated (a mode or a checkpoint name).
    pub method: String,
    /// Its figures.
    pub metrics: EvalMetrics,
}

/// A markdown table: method, accuracy, generated tokens (with thoughts, as the paper
/// counts them, and without), CoT exact match, samples and stage.
pub fn comparison_table(rows: &[TableRow]) -> String {
    let mut out = String::from(
        "| method | accuracy % | # tokens | # tokens w/o thoughts | CoT match % | stage | samples |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let m = &r.metrics;
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
            r.method,
            100.0 * m.accuracy,
            m.mean_tokens,
            m.mean_tokens_without_thoughts,
            100.0 * m.cot_exact_match,
            m.stage,
            m.samples
        ));
    }
    out
}
