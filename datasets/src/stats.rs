//! Statistics of a data set, to compare generated data with the released files.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::{read_samples, DatasetError, Sample};

/// Summary of a list of samples. Graph means are `None` when no sample carries graph fields;
/// the answer shares are `None` when the answers do not have the matching form.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetStats {
    /// Number of samples.
    pub n_samples: usize,
    /// Mean number of graph nodes (`idx_to_symbol`), over samples that have them.
    pub mean_nodes: Option<f64>,
    /// Mean number of graph edges, over samples that have them.
    pub mean_edges: Option<f64>,
    /// Mean number of people per graph (capitalised symbols), over samples with graph fields.
    pub mean_people: Option<f64>,
    /// Mean number of reasoning steps.
    pub mean_steps: f64,
    /// Number of samples per step count.
    pub step_histogram: BTreeMap<usize, usize>,
    /// Mean number of whitespace-separated words of the question (it drives training cost).
    pub mean_question_words: f64,
    /// Mean number of words of all steps together.
    pub mean_step_words: f64,
    /// ProsQA: share of "Is Tom a A or B?" questions whose first option is the answer.
    pub first_option_correct_share: Option<f64>,
    /// ProntoQA: share of "True" answers, when every answer is "True" or "False".
    pub true_share: Option<f64>,
}

impl DatasetStats {
    /// Reads a JSON array of samples and summarises it.
    pub fn from_file(path: &Path) -> Result<Self, DatasetError> {
        Ok(Self::from_samples(&read_samples(path)?))
    }

    /// Summarises `samples` (all means are 0 for an empty list).
    pub fn from_samples(samples: &[Sample]) -> Self {
        let n = samples.len();
        let mean = |xs: &mut dyn Iterator<Item = usize>| -> Option<f64> {
            let (sum, count) = xs.fold((0usize, 0usize), |(s, c), x| (s + x, c + 1));
            (count > 0).then(|| sum as f64 / count as f64)
        };
        let words = |s: &str| s.split_whitespace().count();
        let mut step_histogram = BTreeMap::new();
        for s in samples {
            *step_histogram.entry(s.steps.len()).or_insert(0) += 1;
        }
        let first_option = samples.iter().map(first_option_is_answer).collect::<Option<Vec<_>>>();
        let true_false = samples
            .iter()
            .map(|s| match s.answer.as_str() {
                "True" => Some(true),
                "False" => Some(false),
                _ => None,
            })
            .collect::<Option<Vec<_>>>();
        let share = |flags: Option<Vec<bool>>| {
            flags
                .filter(|f| !f.is_empty())
                .map(|f| f.iter().filter(|&&x| x).count() as f64 / f.len() as f64)
        };
        Self {
            n_samples: n,
            mean_nodes: mean(
                &mut samples.iter().filter_map(|s| s.idx_to_symbol.as_ref().map(Vec::len)),
            ),
            mean_edges: mean(&mut samples.iter().filter_map(|s| s.edges.as_ref().map(Vec::len))),
            mean_people: mean(&mut samples.iter().filter_map(|s| {
                s.idx_to_symbol
                    .as_ref()
                    .map(|sy| sy.iter().filter(|x| x.starts_with(char::is_uppercase)).count())
            })),
            mean_steps: mean(&mut samples.iter().map(|s| s.steps.len())).unwrap_or(0.0),
            step_histogram,
            mean_question_words: mean(&mut samples.iter().map(|s| words(&s.question)))
                .unwrap_or(0.0),
            mean_step_words: mean(
                &mut samples.iter().map(|s| s.steps.iter().map(|t| words(t)).sum()),
            )
            .unwrap_or(0.0),
            first_option_correct_share: share(first_option),
            true_share: share(true_false),
        }
    }
}

/// For "... Is Tom a A or B?" with answer "Tom is a X.": whether X is A; `None` for another
/// form.
fn first_option_is_answer(s: &Sample) -> Option<bool> {
    let query = &s.question[s.question.rfind("Is ")?..];
    let first = query.split_whitespace().nth(3)?;
    let answer = s.answer.strip_suffix('.')?.split_whitespace().last()?;
    let options: Vec<&str> = query.trim_end_matches('?').split_whitespace().collect();
    match options.as_slice() {
        ["Is", _, "a", a, "or", b] if answer == *a || answer == *b => Some(answer == first),
        _ => None,
    }
}

/// A table of two data sets' statistics side by side, with the ratio of the second to the
/// first, e.g. `format_side_by_side(("real", &real), ("generated", &ours))`.
pub fn format_side_by_side(a: (&str, &DatasetStats), b: (&str, &DatasetStats)) -> String {
    let (name_a, sa) = a;
    let (name_b, sb) = b;
    let mut rows: Vec<(String, Option<f64>, Option<f64>, bool)> = vec![
        ("samples".into(), Some(sa.n_samples as f64), Some(sb.n_samples as f64), false),
        ("mean nodes".into(), sa.mean_nodes, sb.mean_nodes, true),
        ("mean edges".into(), sa.mean_edges, sb.mean_edges, true),
        ("mean people".into(), sa.mean_people, sb.mean_people, true),
        ("mean steps".into(), Some(sa.mean_steps), Some(sb.mean_steps), true),
        (
            "mean question words".into(),
            Some(sa.mean_question_words),
            Some(sb.mean_question_words),
            true,
        ),
        ("mean step words".into(), Some(sa.mean_step_words), Some(sb.mean_step_words), true),
        (
            "first option correct".into(),
            sa.first_option_correct_share,
            sb.first_option_correct_share,
            true,
        ),
        ("answer True".into(), sa.true_share, sb.true_share, true),
    ];
    let steps: std::collections::BTreeSet<usize> =
        sa.step_histogram.keys().chain(sb.step_histogram.keys()).copied().collect();
    let hist_share = |s: &DatasetStats, k: usize| {
        (s.n_samples > 0)
            .then(|| *s.step_histogram.get(&k).unwrap_or(&0) as f64 / s.n_samples as f64)
    };
    for k in steps {
        rows.push((format!("share with {k} steps"), hist_share(sa, k), hist_share(sb, k), true));
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(6);
    let col = name_a.len().max(name_b.len()).max(10);
    let mut out = String::new();
    let _ =
        writeln!(out, "{:<width$}  {:>col$}  {:>col$}  {:>7}", "metric", name_a, name_b, "ratio");
    for (label, x, y, fractional) in rows {
        if x.is_none() && y.is_none() {
            continue;
        }
        let cell = |v: Option<f64>| match v {
            None => "-".to_string(),
            Some(v) if fractional => format!("{v:.3}"),
            Some(v) => format!("{v:.0}"),
        };
        let ratio = match (x, y) {
            (Some(x), Some(y)) if x != 0.0 => format!("{:.3}", y / x),
            _ => "-".to_string(),
        };
        let _ = writeln!(out, "{label:<width$}  {:>col$}  {:>col$}  {ratio:>7}", cell(x), cell(y));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use coconut_testing::{assert_close, Tolerance};

    /// Means of integers over a few hundred samples: exact up to the last bits.
    const EXACT: Tolerance = Tolerance::new(1e-12, 0.0);

    const PROSQA: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/datasets/prosqa/prosqa_valid.json");
    const PRONTOQA: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/datasets/prontoqa/prontoqa_valid.json");

    #[test]
    fn statistics_of_the_real_files() {
        let p = DatasetStats::from_file(Path::new(PROSQA)).unwrap();
        assert_eq!(p.n_samples, 300);
        assert_close(p.mean_nodes.unwrap(), 22.82, EXACT, "mean nodes");
        assert_close(p.mean_edges.unwrap(), 36.26, EXACT, "mean edges");
        assert_close(p.mean_steps, 1126.0 / 300.0, EXACT, "mean steps");
        assert_eq!(p.step_histogram, BTreeMap::from([(3, 124), (4, 133), (5, 36), (6, 7)]));
        assert_close(p.mean_question_words, 180.51, EXACT, "mean question words");
        assert_close(p.first_option_correct_share.unwrap(), 0.48, EXACT, "first option share");
        assert_eq!(p.true_share, None);

        let q = DatasetStats::from_file(Path::new(PRONTOQA)).unwrap();
        assert_eq!(q.n_samples, 200);
        assert_eq!(q.first_option_correct_share, None);
        assert!(q.true_share.is_some());
        let table = format_side_by_side(("ProsQA", &p), ("ProntoQA", &q));
        assert!(table.contains("mean question words"), "{table}");
        assert!(table.contains("share with 6 steps"), "{table}");
    }

    #[test]
    fn missing_file_error_names_it() {
        let err = DatasetStats::from_file(Path::new("no/such/file.json")).unwrap_err();
        assert!(err.to_string().contains("no/such/file.json"), "{err}");
    }
}
