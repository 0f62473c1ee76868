//! The paper's analysis of latent reasoning as search (section 5, "Understanding the Latent
//! Reasoning in Coconut"), on ProsQA-format data whose samples carry their graph.
//!
//! The definitions, as the paper gives them and as we apply them to our data:
//!
//! - "we can use the probability of the model predicting each concept to be the next one ...
//!   as a *value* of that node": after the question and k continuous thoughts, `<eot>`
//!   switches the model back to language, and the next language step of our data names the
//!   node the reasoning has reached: for k = 0 the first step, `<root> is a <concept>.`; for
//!   k ≥ 1, `Every <concept> is a <concept>.`. We force the step's text up to that first
//!   concept (`<root> is a` or `Every`) and read the model's probability of each node's full
//!   name, teacher-forced over its tokens up to and including the token that ends the name
//!   (`.` after the first step, ` is` in the others), so names that prefix each other are
//!   scored apart. That probability is the node's value after k thoughts.
//! - "frontier nodes": the nodes the reasoning can have reached, at the shortest directed
//!   distance from the root that the scored step names: 1 for k = 0 and k for k ≥ 1.
//! - "height": "the shortest distance to any leaf node" (a node without children).
//! - The path to the answer: the root, the concepts the reference steps name, the target.
//!
//! A CoT model is analysed the same way after k language steps instead of k thoughts: the
//! paper's contrast, where a written step commits to one node.

use std::collections::{BTreeMap, VecDeque};

use coconut_curriculum::{Mode, TokenizedSample, Tokenizer};
use coconut_latent::{latent_hidden_states, DeviceBatch};
use coconut_model::{causal_bias, CausalLm, KvCache};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// A ProsQA question's graph, as the dataset stores it beside the question.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProsqaGraph {
    /// Directed edges `[parent, child]` between node indices.
    pub edges: Vec<[usize; 2]>,
    /// The node the question starts from (a person).
    pub root: usize,
    /// The answer's concept.
    pub target: usize,
    /// The other option of the question.
    pub neg_target: usize,
    /// Each node's name.
    pub idx_to_symbol: Vec<String>,
}

impl ProsqaGraph {
    fn children(&self) -> Vec<Vec<usize>> {
        let mut children = vec![Vec::new(); self.idx_to_symbol.len()];
        for &[from, to] in &self.edges {
            children[from].push(to);
        }
        children
    }

    /// Each node's shortest directed distance from the root (`None`: unreachable).
    pub fn distances(&self) -> Vec<Option<usize>> {
        let children = self.children();
        let mut distance = vec![None; self.idx_to_symbol.len()];
        distance[self.root] = Some(0);
        let mut queue = VecDeque::from([self.root]);
        while let Some(node) = queue.pop_front() {
            let next = distance[node].map(|d| d + 1);
            for &child in &children[node] {
                if distance[child].is_none() {
                    distance[child] = next;
                    queue.push_back(child);
                }
            }
        }
        distance
    }

    /// Each node's height: its shortest directed distance to a leaf (0 for a leaf).
    pub fn heights(&self) -> Vec<usize> {
        let n = self.idx_to_symbol.len();
        let mut parents = vec![Vec::new(); n];
        for &[from, to] in &self.edges {
            parents[to].push(from);
        }
        let children = self.children();
        // A breadth-first search backwards from every leaf at once.
        let mut height = vec![usize::MAX; n];
        let mut queue: VecDeque<usize> = (0..n).filter(|&v| children[v].is_empty()).collect();
        for &leaf in &queue {
            height[leaf] = 0;
        }
        while let Some(node) = queue.pop_front() {
            for &parent in &parents[node] {
                if height[parent] == usize::MAX {
                    height[parent] = height[node] + 1;
                    queue.push_back(parent);
                }
            }
        }
        height
    }

    /// The nodes at distance `distance` from the root: the frontier the step names.
    pub fn frontier(&self, distance: usize) -> Vec<usize> {
        let d = self.distances();
        (0..d.len()).filter(|&v| d[v] == Some(distance)).collect()
    }

    /// The root, the concepts the reference `steps` name (`... is a <concept>.`), the target.
    pub fn path(&self, steps: &[String]) -> Vec<usize> {
        let index: BTreeMap<&str, usize> =
            self.idx_to_symbol.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        let mut path = vec![self.root];
        for step in steps {
            let last = step.trim_end_matches('.').rsplit(' ').next().unwrap_or("");
            if let Some(&node) = index.get(last) {
                path.push(node);
            }
        }
        if path.last() != Some(&self.target) {
            path.push(self.target);
        }
        path
    }
}

/// Which step of the reasoning is scored after `k` thoughts (or steps), and the distance of
/// the frontier it names.
pub fn frontier_distance(k: usize) -> usize {
    k.max(1)
}

/// The text forced after `<eot>` (or after k language steps) and the text after each node
/// name that ends it, for the step scored after `k` thoughts.
fn step_text(k: usize, root_name: &str) -> (String, &'static str) {
    if k == 0 {
        (format!("{root_name} is a"), ".")
    } else {
        ("Every".to_string(), " is")
    }
}

/// One node's value after k thoughts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeValue {
    /// The node's index in its graph.
    pub node: usize,
    /// The model's probability of the node's name.
    pub value: f64,
    /// Whether the node is on the frontier.
    pub frontier: bool,
    /// Whether the node is on the path to the answer.
    pub on_path: bool,
    /// The node's height.
    pub height: usize,
}

/// One ProsQA question as the latent-search analysis reads it.
#[derive(Debug, Clone, Copy)]
pub struct GraphQuestion<'a> {
    /// The tokenized sample.
    pub sample: &'a TokenizedSample,
    /// Its reference steps as text (a CoT model reads the first k of them instead of
    /// thoughts).
    pub steps: &'a [String],
    /// The graph of its question.
    pub graph: &'a ProsqaGraph,
}

/// Scores every node of the question's graph (but the root) after `k` thoughts.
pub fn node_values(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    mode: Mode,
    question: &GraphQuestion,
    k: usize,
    device: Device,
) -> Vec<NodeValue> {
    let GraphQuestion { sample, steps, graph } = *question;
    let special = tokenizer.special();
    let (forced, end) = step_text(k, &graph.idx_to_symbol[graph.root]);
    let mut prompt = sample.question.clone();
    if mode == Mode::Cot {
        for step in &sample.steps[..k.min(sample.steps.len())] {
            prompt.extend(step);
        }
    } else {
        prompt.push(special.start_latent);
        prompt.extend(std::iter::repeat_n(special.latent, k));
        prompt.push(special.end_latent);
    }
    prompt.extend(tokenizer.encode(&forced));
    let candidates: Vec<usize> =
        (0..graph.idx_to_symbol.len()).filter(|&v| v != graph.root).collect();
    let names: Vec<Vec<u32>> = candidates
        .iter()
        .map(|&v| tokenizer.encode(&format!(" {}{end}", graph.idx_to_symbol[v])))
        .collect();
    let probabilities = continuation_probabilities(model, &prompt, &names, &special, device);
    let frontier = graph.frontier(frontier_distance(k));
    let path = graph.path(steps);
    let heights = graph.heights();
    candidates
        .iter()
        .zip(probabilities)
        .map(|(&node, value)| NodeValue {
            node,
            value,
            frontier: frontier.contains(&node),
            on_path: path.contains(&node),
            height: heights[node],
        })
        .collect()
}

/// The probability of each continuation after `prompt`, teacher-forced over its tokens: the
/// prompt runs once (its latent passes included), then every continuation reads its cache.
pub fn continuation_probabilities(
    model: &dyn CausalLm,
    prompt: &[u32],
    continuations: &[Vec<u32>],
    special: &coconut_curriculum::SpecialTokens,
    device: Device,
) -> Vec<f64> {
    tch::no_grad(|| {
        let batch = coconut_curriculum::collate_prompts(&[prompt.to_vec()], special);
        let batch = DeviceBatch::new(&batch, device, model.kind());
        let t = batch.input_ids.size()[1];
        let mut cache = KvCache::new();
        let last = latent_hidden_states(model, &batch, &mut cache, false, t - 1); // (1, 1, C)
        let first = model.lm_head(&last).squeeze().log_softmax(-1, Kind::Float); // (V)
        let n = continuations.len() as i64;
        let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
        let first_ids: Vec<i64> = continuations.iter().map(|c| i64::from(c[0])).collect();
        let first_ids = Tensor::from_slice(&first_ids).to_device(device);
        let mut log_p = first.index_select(0, &first_ids).to_kind(Kind::Double); // (n)
        if longest > 1 {
            // Every continuation's tokens but its last, right-padded, after the prompt.
            let width = longest as i64 - 1;
            // `ids` feeds the tokens, `next` holds the token each one predicts, `scored`
            // marks the columns a continuation has.
            let mut ids = vec![0i64; (n * width) as usize];
            let mut next = vec![0i64; (n * width) as usize];
            let mut scored = vec![0.0f64; (n * width) as usize];
            let mut mask = vec![1i64; (n * (t + width)) as usize];
            for (row, c) in continuations.iter().enumerate() {
                for col in 0..c.len() - 1 {
                    let at = row * width as usize + col;
                    (ids[at], next[at], scored[at]) =
                        (i64::from(c[col]), i64::from(c[col + 1]), 1.0);
                }
                for col in c.len() - 1..longest - 1 {
                    mask[row * (t + width) as usize + t as usize + col] = 0;
                }
            }
            cache.index_rows(&Tensor::zeros([n], (Kind::Int64, device)));
            let ids = Tensor::from_slice(&ids).view([n, width]).to_device(device);
            let mask = Tensor::from_slice(&mask).view([n, t + width]).to_device(device);
            let positions = (Tensor::arange(width, (Kind::Int64, device)) + t)
                .unsqueeze(0)
                .expand([n, width], false);
            let bias = causal_bias(&mask, model.kind()).narrow(2, t, width); // (n, 1, width, t + width)
            let (logits, _) = model.forward(&ids, &positions, &bias, Some(&mut cache), false);
            let log_probs = logits.log_softmax(-1, Kind::Float); // (n, width, V)
            let next = Tensor::from_slice(&next).view([n, width, 1]).to_device(device);
            let scored = Tensor::from_slice(&scored).view([n, width]).to_device(device);
            let picked = log_probs.gather(2, &next, false).squeeze_dim(2).to_kind(Kind::Double); // (n, width)
                                                                                                 // Masked, not multiplied: an unscored column's log-probability may be -inf.
            log_p +=
                picked.masked_fill(&scored.eq(0.0), 0.0).sum_dim_intlist(1, false, Kind::Double);
        }
        Vec::<f64>::try_from(log_p.exp().to_device(Device::Cpu))
            .expect("one value per continuation")
    })
}

/// The figures of one number of thoughts over every sample (means over samples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchFigures {
    /// Thoughts (or language steps, for a CoT model) before the scored step.
    pub k: usize,
    /// Samples with a frontier at this distance.
    pub samples: usize,
    /// Total value of the frontier nodes.
    pub frontier_value: f64,
    /// Total value of the other nodes.
    pub off_frontier_value: f64,
    /// Total value of the frontier nodes on the path to the answer.
    pub path_value: f64,
    /// The largest, second and third frontier values (0 where the frontier is smaller).
    pub top_frontier_values: [f64; 3],
    /// Mean value of frontier nodes on the path, by height.
    pub value_by_height_on_path: BTreeMap<usize, (f64, usize)>,
    /// Mean value of frontier nodes off the path, by height.
    pub value_by_height_off_path: BTreeMap<usize, (f64, usize)>,
}

/// Aggregates the node values of every sample at one `k`.
pub fn aggregate(k: usize, per_sample: &[Vec<NodeValue>]) -> SearchFigures {
    let mut f = SearchFigures { k, ..SearchFigures::default() };
    let mut sums: [BTreeMap<usize, (f64, usize)>; 2] = Default::default();
    for values in per_sample {
        let frontier: Vec<&NodeValue> = values.iter().filter(|v| v.frontier).collect();
        if frontier.is_empty() {
            continue;
        }
        f.samples += 1;
        f.frontier_value += frontier.iter().map(|v| v.value).sum::<f64>();
        f.off_frontier_value += values.iter().filter(|v| !v.frontier).map(|v| v.value).sum::<f64>();
        f.path_value += frontier.iter().filter(|v| v.on_path).map(|v| v.value).sum::<f64>();
        let mut sorted: Vec<f64> = frontier.iter().map(|v| v.value).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (slot, value) in f.top_frontier_values.iter_mut().zip(sorted) {
            *slot += value;
        }
        for v in frontier {
            let entry = sums[usize::from(!v.on_path)].entry(v.height).or_default();
            entry.0 += v.value;
            entry.1 += 1;
        }
    }
    let n = f.samples.max(1) as f64;
    f.frontier_value /= n;
    f.off_frontier_value /= n;
    f.path_value /= n;
    f.top_frontier_values.iter_mut().for_each(|v| *v /= n);
    let means = |m: &BTreeMap<usize, (f64, usize)>| {
        m.iter().map(|(&h, &(sum, count))| (h, (sum / count as f64, count))).collect()
    };
    f.value_by_height_on_path = means(&sums[0]);
    f.value_by_height_off_path = means(&sums[1]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0 -> 1 -> 2 -> 4 and 0 -> 3 -> 4 (4 reachable at distance 2 and 3), 3 -> 5, 4 -> 6.
    fn graph() -> ProsqaGraph {
        ProsqaGraph {
            edges: vec![[0, 1], [1, 2], [2, 4], [0, 3], [3, 4], [3, 5], [4, 6]],
            root: 0,
            target: 6,
            neg_target: 5,
            idx_to_symbol: ["Tom", "a", "b", "c", "d", "e", "f"].map(String::from).to_vec(),
        }
    }

    #[test]
    fn distances_take_the_shortest_of_two_paths() {
        let d = graph().distances();
        assert_eq!(d, [Some(0), Some(1), Some(2), Some(1), Some(2), Some(2), Some(3)]);
        assert_eq!(graph().frontier(2), [2, 4, 5]);
        assert_eq!(graph().frontier(1), [1, 3]);
    }

    #[test]
    fn heights_are_the_shortest_distance_to_a_leaf() {
        // Leaves: 5 and 6. 3 reaches 5 in one step (and 6 in two): height 1.
        assert_eq!(graph().heights(), [2, 3, 2, 1, 1, 0, 0]);
    }

    #[test]
    fn the_path_follows_the_steps_to_the_target() {
        let steps = ["Tom is a c.", "Every c is a d."].map(String::from);
        assert_eq!(graph().path(&steps), [0, 3, 4, 6]);
    }

    #[test]
    fn figures_average_over_samples_with_a_frontier() {
        let v = |node, value, frontier, on_path, height| NodeValue {
            node,
            value,
            frontier,
            on_path,
            height,
        };
        let samples = vec![
            vec![v(1, 0.6, true, true, 3), v(3, 0.3, true, false, 1), v(2, 0.1, false, false, 2)],
            vec![v(1, 0.2, true, false, 3), v(3, 0.8, true, true, 1)],
            vec![v(2, 1.0, false, false, 2)], // no frontier node: not counted
        ];
        let f = aggregate(1, &samples);
        assert_eq!(f.samples, 2);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(f.frontier_value, 0.95) && close(f.off_frontier_value, 0.05));
        assert!(close(f.path_value, 0.7));
        assert!(close(f.top_frontier_values[0], 0.7) && close(f.top_frontier_values[1], 0.25));
        assert_eq!(f.top_frontier_values[2], 0.0);
        assert_eq!(f.value_by_height_on_path[&1], (0.8, 1));
        assert_eq!(f.value_by_height_off_path[&3], (0.2, 1));
    }
}
