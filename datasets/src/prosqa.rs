//! ProsQA-style questions over random DAGs (Coconut paper, appendix A.2), and their checker.
//!
//! A graph grows one node at a time from two people, node 0 and node 1. Each new node draws a
//! Poisson(1.5) number of parents among the earlier nodes, weighted by `depth * 1.5 + 1` so
//! deep chains form; with probability 0.35 the parents may not descend from node 1, with 0.35
//! they may not descend from node 0, else they are unrestricted. Every node thus carries a
//! label: 1 (reached from node 0 only), 2 (from node 1 only), 3 (both) or 0 (neither). The
//! question asks whether the root person is a deep leaf of its own side (the answer) or a leaf
//! of the other side (the distractor), so exactly one option is reachable.
//!
//! Where the paper leaves room, these choices make the output match the statistics of the
//! released validation split (checked by a test; `cargo run --example compare_stats` prints
//! the comparison):
//! - `depth` is the distance from the node's own person; nodes of both sides or of neither
//!   have weight 1, so they rarely get children (11% of them do in the real graphs);
//! - the side probabilities default to 0.4 and 0.4, see [`ProsQaConfig::default`];
//! - a node that draws zero parents becomes a new person only with probability
//!   `new_person_prob`, else it redraws; the real graphs hold 2.5 people on average, where
//!   keeping every zero draw would give about 4.5; nodes left with neither parents nor
//!   children are dropped;
//! - the node count is triangular over its range, as the real counts peak mid-range;
//! - the root is the person of the deeper side (its deepest leaf is the answer), and graphs
//!   whose answer lies outside `min_steps..=max_steps` are redrawn. This reproduces the real
//!   step histogram (3: 41%, 4: 44%, 5: 12%, 6: 2%) and the larger root side.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, Poisson};
use serde::{Deserialize, Serialize};

use crate::names::{concept_names, PROSQA_CONCEPTS, PROSQA_PEOPLE};
use crate::{DatasetError, Sample};

const DATASET: &str = "ProsQA";

/// Graph draws allowed for one sample before the configuration is declared unworkable.
const MAX_GRAPH_ATTEMPTS: usize = 10_000;

/// Shape of the generated graphs and questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProsQaConfig {
    /// Fewest nodes (people and concepts) drawn for a graph, before isolated nodes are dropped;
    /// the count is triangular over `min_nodes..=max_nodes`, peaking in the middle.
    pub min_nodes: usize,
    /// Most nodes drawn for a graph (inclusive).
    pub max_nodes: usize,
    /// Mean of the Poisson number of parents of each new node (1.5 in the paper).
    pub mean_parents: f64,
    /// Probability that a node drawing zero parents is kept as a new person (else it redraws).
    pub new_person_prob: f64,
    /// Probability that a new node's parents exclude descendants of node 1 (0.35 in the paper,
    /// 0.4 by default; see [`ProsQaConfig::default`]).
    pub first_side_prob: f64,
    /// Probability that a new node's parents exclude descendants of node 0 (as above; the rest
    /// leaves the parents unrestricted).
    pub second_side_prob: f64,
    /// Parent sampling weight per level of depth: weight = depth * this + 1 (1.5 in the paper).
    pub depth_weight: f64,
    /// Fewest reasoning steps (edges from the root to the answer).
    pub min_steps: usize,
    /// Most reasoning steps (inclusive).
    pub max_steps: usize,
}

impl Default for ProsQaConfig {
    /// The paper's data: about 23 nodes, 36 edges and 3.8 steps (3 to 6) per question.
    fn default() -> Self {
        Self {
            min_nodes: 18,
            max_nodes: 28,
            mean_parents: 1.5,
            new_person_prob: 0.15,
            // The paper states 0.35 and 0.35 (cumulative 0.7). With those, 2.2 nodes per graph
            // descend from both people; the real split has 1.3, which 0.4 and 0.4 reproduce
            // (1.4), along with the sizes of both sides. Set both to 0.35 for the paper's values.
            first_side_prob: 0.4,
            second_side_prob: 0.4,
            depth_weight: 1.5,
            min_steps: 3,
            max_steps: 6,
        }
    }
}

impl ProsQaConfig {
    /// Small graphs for fast CPU training: about 9 nodes and 9.5 edges, 2 or 3 steps,
    /// questions of about 50 words, a quarter of the paper's (question length drives the
    /// training cost).
    pub fn small() -> Self {
        Self {
            min_nodes: 7,
            max_nodes: 11,
            mean_parents: 1.0,
            new_person_prob: 0.05,
            min_steps: 2,
            max_steps: 3,
            ..Self::default()
        }
    }

    /// Checks every field once, so generation can rely on them.
    pub fn validate(&self) -> Result<(), DatasetError> {
        let bad = |field, reason: String| {
            Err(DatasetError::InvalidConfig { dataset: DATASET, field, reason })
        };
        if self.min_nodes < 3 {
            return bad("min_nodes", format!("{} < 3 (two people and a concept)", self.min_nodes));
        }
        if self.max_nodes < self.min_nodes {
            return bad("max_nodes", format!("{} < min_nodes {}", self.max_nodes, self.min_nodes));
        }
        let names = crate::names::max_concept_names();
        if self.max_nodes > names {
            return bad("max_nodes", format!("{} > {names} available names", self.max_nodes));
        }
        if !(self.mean_parents > 0.0 && self.mean_parents.is_finite()) {
            return bad("mean_parents", format!("{} is not a positive number", self.mean_parents));
        }
        for (field, p) in [
            ("new_person_prob", self.new_person_prob),
            ("first_side_prob", self.first_side_prob),
            ("second_side_prob", self.second_side_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(field, format!("{p} is not a probability"));
            }
        }
        if self.first_side_prob + self.second_side_prob > 1.0 {
            return bad("second_side_prob", "first_side_prob + second_side_prob > 1".into());
        }
        if !(self.depth_weight >= 0.0 && self.depth_weight.is_finite()) {
            return bad(
                "depth_weight",
                format!("{} is not a non-negative number", self.depth_weight),
            );
        }
        if self.min_steps < 1 {
            return bad("min_steps", "must be at least 1".into());
        }
        if self.max_steps < self.min_steps {
            return bad("max_steps", format!("{} < min_steps {}", self.max_steps, self.min_steps));
        }
        if self.min_steps >= self.max_nodes {
            return bad(
                "min_steps",
                format!("{} needs more than max_nodes {}", self.min_steps, self.max_nodes),
            );
        }
        Ok(())
    }
}

/// (Tests) generates `n` distinct ProsQA questions from `seed`; the correct option comes first in
/// exactly `n / 2` of them (rounded at random for odd `n`), in shuffled order.
#[cfg(test)]
fn generate(cfg: &ProsQaConfig, n: usize, seed: u64) -> Result<Vec<Sample>, DatasetError> {
    crate::generate_distinct(&crate::DatasetConfig::ProsQa(cfg.clone()), n, seed)
}

/// Generates one question; `correct_first` puts the reachable concept first in
/// "Is Tom a A or B?". The configuration must be valid ([`ProsQaConfig::validate`]).
pub fn generate_sample(
    cfg: &ProsQaConfig,
    rng: &mut StdRng,
    correct_first: bool,
) -> Result<Sample, DatasetError> {
    for _ in 0..MAX_GRAPH_ATTEMPTS {
        let parents = grow(cfg, rng);
        if let Some(question) = pick_question(cfg, &parents, rng) {
            return Ok(render(&parents, &question, correct_first, rng));
        }
    }
    Err(DatasetError::Exhausted { dataset: DATASET, attempts: MAX_GRAPH_ATTEMPTS, have: 0 })
}

/// Grows a DAG (appendix A.2, Algorithm 1) and drops isolated nodes; returns each node's
/// parents in sampled order. Nodes 0 and 1 are the two people the question is built around.
fn grow(cfg: &ProsQaConfig, rng: &mut StdRng) -> Vec<Vec<usize>> {
    // Triangular over min..=max (the mean of two uniform draws): the real node counts peak in
    // the middle of their range rather than spreading evenly.
    let uniform = |rng: &mut StdRng| rng.random_range(cfg.min_nodes..=cfg.max_nodes);
    let n = (uniform(rng) + uniform(rng) + rng.random_range(0..=1)) / 2;
    let poisson = Poisson::new(cfg.mean_parents).expect("validated mean_parents");
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(), Vec::new()];
    // Label bits: 1 = descends from node 0, 2 = descends from node 1.
    let mut label: Vec<u8> = vec![1, 2];
    // Distance from node 0 and from node 1, where reachable.
    let mut dist: [Vec<Option<usize>>; 2] = [vec![Some(0), None], vec![None, Some(0)]];
    let mut people = 2;
    for idx in 2..n {
        let mut k = poisson.sample(rng) as usize;
        // Zero parents means a new person; we redraw most of them (see the module doc), and
        // always once the names of people run out.
        while k == 0
            && (people >= PROSQA_PEOPLE.len() || rng.random::<f64>() >= cfg.new_person_prob)
        {
            k = poisson.sample(rng) as usize;
        }
        let r: f64 = rng.random();
        let excluded: u8 = if r < cfg.first_side_prob {
            2
        } else if r < cfg.first_side_prob + cfg.second_side_prob {
            1
        } else {
            0
        };
        let candidates: Vec<usize> = (0..idx).filter(|&c| label[c] & excluded == 0).collect();
        // depth_to_root: the distance from the node's own person (node 0 or 1). A node reached
        // from both or from neither has no single root and the weight of depth 0.
        let weights: Vec<f64> = candidates
            .iter()
            .map(|&c| match label[c] {
                1 | 2 => {
                    let d = dist[usize::from(label[c] - 1)][c].expect("reachable by label");
                    d as f64 * cfg.depth_weight + 1.0
                }
                _ => 1.0,
            })
            .collect();
        let chosen = choose_weighted(rng, candidates, weights, k);
        label.push(chosen.iter().fold(0, |l, &p| l | label[p]));
        for d in &mut dist {
            let nearest = chosen.iter().filter_map(|&p| d[p]).min();
            d.push(nearest.map(|x| x + 1));
        }
        if chosen.is_empty() {
            people += 1;
        }
        parents.push(chosen);
    }
    drop_isolated(parents)
}

/// Draws `k` distinct items (at most all of them), each draw proportional to its weight.
fn choose_weighted(
    rng: &mut StdRng,
    mut items: Vec<usize>,
    mut weights: Vec<f64>,
    k: usize,
) -> Vec<usize> {
    let mut chosen = Vec::with_capacity(k);
    while chosen.len() < k && !items.is_empty() {
        let mut x = rng.random::<f64>() * weights.iter().sum::<f64>();
        let mut j = 0;
        while j + 1 < weights.len() && x >= weights[j] {
            x -= weights[j];
            j += 1;
        }
        chosen.push(items.swap_remove(j));
        weights.swap_remove(j);
    }
    chosen
}

/// Removes nodes without parents and children (zero-parent draws nobody picked later) and
/// renumbers the rest in order.
fn drop_isolated(parents: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
    let mut has_child = vec![false; parents.len()];
    for ps in &parents {
        for &p in ps {
            has_child[p] = true;
        }
    }
    // Nodes 0 and 1 always stay, so they keep their numbers; a childless one is rejected later.
    let keep: Vec<bool> =
        parents.iter().enumerate().map(|(i, ps)| i < 2 || !ps.is_empty() || has_child[i]).collect();
    let mut new_index = vec![usize::MAX; parents.len()];
    let mut next = 0;
    for (i, &k) in keep.iter().enumerate() {
        if k {
            new_index[i] = next;
            next += 1;
        }
    }
    parents
        .into_iter()
        .enumerate()
        .filter(|&(i, _)| keep[i])
        .map(|(_, ps)| ps.into_iter().map(|p| new_index[p]).collect())
        .collect()
}

/// The nodes a question is about, and the reasoning chain from root to target.
struct Question {
    root: usize,
    target: usize,
    neg_target: usize,
    /// Nodes from the root to the target along one shortest path.
    path: Vec<usize>,
}

/// Picks root, answer and distractor, or `None` when the graph cannot give a valid question.
fn pick_question(cfg: &ProsQaConfig, parents: &[Vec<usize>], rng: &mut StdRng) -> Option<Question> {
    let children = children_of(parents);
    if children[0].is_empty() || children[1].is_empty() {
        return None;
    }
    let dist = [distances(&children, 0), distances(&children, 1)];
    // Leaves reached from one person only, with their depth from that person.
    let side_leaves = |s: usize| -> Vec<(usize, usize)> {
        (0..parents.len())
            .filter(|&v| children[v].is_empty() && !parents[v].is_empty())
            .filter_map(|v| match (dist[s][v], dist[1 - s][v]) {
                (Some(d), None) => Some((v, d)),
                _ => None,
            })
            .collect()
    };
    let leaves = [side_leaves(0), side_leaves(1)];
    let deepest = |s: usize| leaves[s].iter().map(|&(_, d)| d).max();
    let (d0, d1) = (deepest(0)?, deepest(1)?);
    let root = match d0.cmp(&d1) {
        std::cmp::Ordering::Greater => 0,
        std::cmp::Ordering::Less => 1,
        std::cmp::Ordering::Equal => rng.random_range(0..2),
    };
    let steps = d0.max(d1);
    if !(cfg.min_steps..=cfg.max_steps).contains(&steps) {
        return None;
    }
    let targets: Vec<usize> =
        leaves[root].iter().filter(|&&(_, d)| d == steps).map(|&(v, _)| v).collect();
    let target = targets[rng.random_range(0..targets.len())];
    let other = &leaves[1 - root];
    let neg_target = other[rng.random_range(0..other.len())].0;
    // Walk back from the target along a random shortest path.
    let mut path = vec![target];
    let mut cur = target;
    while cur != root {
        let d = dist[root][cur].expect("on the root side");
        let preds: Vec<usize> =
            parents[cur].iter().copied().filter(|&p| dist[root][p] == Some(d - 1)).collect();
        cur = preds[rng.random_range(0..preds.len())];
        path.push(cur);
    }
    path.reverse();
    Some(Question { root, target, neg_target, path })
}

fn children_of(parents: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut children = vec![Vec::new(); parents.len()];
    for (v, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(v);
        }
    }
    children
}

/// Breadth-first distances (in edges) from `source`; `None` where unreachable.
fn distances(children: &[Vec<usize>], source: usize) -> Vec<Option<usize>> {
    let mut dist = vec![None; children.len()];
    dist[source] = Some(0);
    let mut queue = VecDeque::from([source]);
    while let Some(u) = queue.pop_front() {
        for &v in &children[u] {
            if dist[v].is_none() {
                dist[v] = Some(dist[u].unwrap_or(0) + 1);
                queue.push_back(v);
            }
        }
    }
    dist
}

/// Names the nodes and writes the question, steps, answer and graph fields.
fn render(parents: &[Vec<usize>], q: &Question, correct_first: bool, rng: &mut StdRng) -> Sample {
    let n = parents.len();
    let is_person: Vec<bool> = parents.iter().map(|ps| ps.is_empty()).collect();
    let n_people = is_person.iter().filter(|&&p| p).count();
    let mut people: Vec<&str> = PROSQA_PEOPLE.to_vec();
    people.shuffle(rng);
    let mut concepts = concept_names((n - n_people).max(PROSQA_CONCEPTS));
    concepts.shuffle(rng);
    let (mut next_person, mut next_concept) = (people.into_iter(), concepts.into_iter());
    let symbols: Vec<String> = is_person
        .iter()
        .map(|&p| {
            if p {
                next_person.next().expect("validated number of people").to_string()
            } else {
                next_concept.next().expect("enough concept names")
            }
        })
        .collect();

    let fact = |a: usize, b: usize| {
        if is_person[a] {
            format!("{} is a {}.", symbols[a], symbols[b])
        } else {
            format!("Every {} is a {}.", symbols[a], symbols[b])
        }
    };
    // Edges grouped by child, parents in sampled order, as in the released files.
    let edges: Vec<[usize; 2]> =
        parents.iter().enumerate().flat_map(|(b, ps)| ps.iter().map(move |&a| [a, b])).collect();
    let mut sentences: Vec<String> = edges.iter().map(|&[a, b]| fact(a, b)).collect();
    sentences.shuffle(rng);
    let (answer_name, other_name) = (&symbols[q.target], &symbols[q.neg_target]);
    let (first, second) =
        if correct_first { (answer_name, other_name) } else { (other_name, answer_name) };
    let root_name = &symbols[q.root];
    let question = format!("{} Is {root_name} a {first} or {second}?", sentences.join(" "));
    let steps = q.path.windows(2).map(|w| fact(w[0], w[1])).collect();
    Sample {
        question,
        steps,
        answer: format!("{root_name} is a {answer_name}."),
        idx_to_symbol: Some(symbols.clone()),
        edges: Some(edges),
        root: Some(q.root),
        target: Some(q.target),
        neg_target: Some(q.neg_target),
        chain_concepts: None,
    }
}

/// A ProsQA question read back from its text.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedQuestion {
    /// "is a" facts as (subject, concept): "Every X is a Y." and "Tom is a X.".
    pub facts: Vec<(String, String)>,
    /// The person asked about.
    pub person: String,
    /// The two options, in the order asked.
    pub options: [String; 2],
}

/// Parses "Every X is a Y. ... Tom is a X. ... Is Tom a A or B?"; `None` if the text does
/// not follow that template.
pub fn parse_question(question: &str) -> Option<ParsedQuestion> {
    let at = question.rfind("Is ")?;
    let (context, query) = question.split_at(at);
    let mut facts = Vec::new();
    for sentence in context.split('.').map(str::trim).filter(|s| !s.is_empty()) {
        facts.push(parse_fact(sentence)?);
    }
    let words: Vec<&str> = query.trim().strip_suffix('?')?.split_whitespace().collect();
    match words.as_slice() {
        ["Is", person, "a", a, "or", b] => Some(ParsedQuestion {
            facts,
            person: person.to_string(),
            options: [a.to_string(), b.to_string()],
        }),
        _ => None,
    }
}

/// "Every X is a Y" or "Tom is a Y" (no final period) as (subject, concept).
fn parse_fact(sentence: &str) -> Option<(String, String)> {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    match words.as_slice() {
        ["Every", x, "is", "a", y] | [x, "is", "a", y] => Some((x.to_string(), y.to_string())),
        _ => None,
    }
}

/// True when the answer is right by graph search over the question's own text: the answer
/// "Tom is a A." names one of the two options, A is reachable from Tom along the stated "is a"
/// facts and the other option is not. Where the sample carries graph fields, they must agree
/// with the text (same edges, root, target and distractor).
pub fn check_prosqa_answer(sample: &Sample) -> bool {
    let Some(q) = parse_question(&sample.question) else { return false };
    let Some((subject, concept)) = sample.answer.strip_suffix('.').and_then(parse_fact) else {
        return false;
    };
    if subject != q.person || !q.options.contains(&concept) {
        return false;
    }
    let other = if q.options[0] == concept { &q.options[1] } else { &q.options[0] };
    if *other == concept {
        return false;
    }
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (x, y) in &q.facts {
        children.entry(x.as_str()).or_default().push(y.as_str());
    }
    let reached = reachable(&children, &q.person);
    if !reached.contains(concept.as_str()) || reached.contains(other.as_str()) {
        return false;
    }
    graph_fields_agree(sample, &q, &concept, other)
}

fn reachable<'a>(children: &BTreeMap<&'a str, Vec<&'a str>>, from: &'a str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::from([from]);
    let mut stack = vec![from];
    while let Some(u) = stack.pop() {
        for &v in children.get(u).into_iter().flatten() {
            if seen.insert(v) {
                stack.push(v);
            }
        }
    }
    seen
}

/// The optional graph fields, where present, describe the same graph and question as the text.
fn graph_fields_agree(sample: &Sample, q: &ParsedQuestion, answer: &str, other: &str) -> bool {
    let Some(symbols) = &sample.idx_to_symbol else { return true };
    let name = |i: Option<usize>| i.map(|i| symbols.get(i).map(String::as_str));
    let expect =
        [(sample.root, q.person.as_str()), (sample.target, answer), (sample.neg_target, other)];
    if expect.iter().any(|&(idx, want)| name(idx).is_some_and(|got| got != Some(want))) {
        return false;
    }
    let Some(edges) = &sample.edges else { return true };
    let mut from_fields = Vec::with_capacity(edges.len());
    for &[a, b] in edges {
        match (symbols.get(a), symbols.get(b)) {
            (Some(x), Some(y)) => from_fields.push((x.clone(), y.clone())),
            _ => return false,
        }
    }
    let mut from_text = q.facts.clone();
    from_fields.sort();
    from_text.sort();
    from_fields == from_text
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::stats::DatasetStats;
    use coconut_testing::Tolerance;

    /// A share of a few hundred samples: exact up to the last bits.
    const EXACT: Tolerance = Tolerance::new(1e-12, 0.0);

    const REAL_VALID: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/datasets/prosqa/prosqa_valid.json");

    fn real() -> Vec<Sample> {
        crate::read_samples(std::path::Path::new(REAL_VALID)).expect("real ProsQA valid split")
    }

    /// The steps are a chain of facts of the question from the person to the answer, and as
    /// long as the shortest such chain.
    fn steps_are_a_shortest_chain(s: &Sample) -> bool {
        let q = parse_question(&s.question).expect("parsable");
        let Some((_, answer)) = s.answer.strip_suffix('.').and_then(parse_fact) else {
            return false;
        };
        let mut cur = q.person.clone();
        for step in &s.steps {
            let Some(fact) = step.strip_suffix('.').and_then(parse_fact) else { return false };
            if fact.0 != cur || !q.facts.contains(&fact) {
                return false;
            }
            cur = fact.1;
        }
        // Shortest distance by breadth-first search over the text's facts.
        let mut dist = BTreeMap::from([(q.person.clone(), 0usize)]);
        let mut queue = VecDeque::from([q.person.clone()]);
        while let Some(u) = queue.pop_front() {
            for (x, y) in &q.facts {
                if *x == u && !dist.contains_key(y) {
                    dist.insert(y.clone(), dist[&u] + 1);
                    queue.push_back(y.clone());
                }
            }
        }
        cur == answer && dist.get(&answer) == Some(&s.steps.len())
    }

    #[test]
    fn checker_accepts_every_real_validation_sample() {
        let samples = real();
        assert_eq!(samples.len(), 300);
        for (i, s) in samples.iter().enumerate() {
            assert!(check_prosqa_answer(s), "real sample {i} rejected: {}", s.question);
            assert!(steps_are_a_shortest_chain(s), "real sample {i}: steps not a shortest chain");
        }
    }

    #[test]
    fn checker_rejects_wrong_answers_and_inconsistent_fields() {
        let s = &real()[0];
        let q = parse_question(&s.question).unwrap();
        let (_, answer) = parse_fact(s.answer.strip_suffix('.').unwrap()).unwrap();
        let other = q.options.iter().find(|o| **o != answer).unwrap();
        let mut wrong = s.clone();
        wrong.answer = format!("{} is a {other}.", q.person);
        assert!(!check_prosqa_answer(&wrong));
        let mut swapped = s.clone();
        std::mem::swap(&mut swapped.target, &mut swapped.neg_target);
        assert!(!check_prosqa_answer(&swapped));
        let mut fewer_edges = s.clone();
        fewer_edges.edges.as_mut().unwrap().pop();
        assert!(!check_prosqa_answer(&fewer_edges));
        let mut text_only = s.clone();
        text_only.idx_to_symbol = None;
        assert!(check_prosqa_answer(&text_only));
    }

    #[test]
    fn generated_samples_are_correct_for_both_presets() {
        for cfg in [ProsQaConfig::default(), ProsQaConfig::small()] {
            let samples = generate(&cfg, 300, 7).unwrap();
            for (i, s) in samples.iter().enumerate() {
                assert!(check_prosqa_answer(s), "sample {i} rejected: {s:?}");
                assert!(steps_are_a_shortest_chain(s), "sample {i}: bad steps {:?}", s.steps);
                assert!((cfg.min_steps..=cfg.max_steps).contains(&s.steps.len()));
                let edges = s.edges.as_ref().unwrap();
                assert!(edges.iter().all(|&[a, b]| a < b), "edges go forward in node order");
                // Sources are exactly the people (capitalised names).
                let symbols = s.idx_to_symbol.as_ref().unwrap();
                for (v, name) in symbols.iter().enumerate() {
                    let source = edges.iter().all(|&[_, b]| b != v);
                    assert_eq!(source, name.starts_with(char::is_uppercase), "{name}");
                }
            }
        }
    }

    #[test]
    fn statistics_match_the_real_validation_split() {
        let real = DatasetStats::from_samples(&real());
        let generated = generate(&ProsQaConfig::default(), 2000, 2024).unwrap();
        let ours = DatasetStats::from_samples(&generated);
        let close = |name: &str, a: Option<f64>, b: Option<f64>| {
            let (a, b) = (a.unwrap(), b.unwrap());
            coconut_testing::assert_close(b, a, Tolerance::new(0.1, 0.0), name);
        };
        close("nodes", real.mean_nodes, ours.mean_nodes);
        close("edges", real.mean_edges, ours.mean_edges);
        close("steps", Some(real.mean_steps), Some(ours.mean_steps));
        close("question words", Some(real.mean_question_words), Some(ours.mean_question_words));
        assert_eq!(ours.step_histogram.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5, 6]);
        let share = ours.first_option_correct_share.unwrap();
        coconut_testing::assert_close(share, 0.5, EXACT, "share with the correct option first");
    }

    #[test]
    fn same_seed_same_sample_and_configs_are_validated() {
        let cfg = ProsQaConfig::default();
        let mut a = StdRng::seed_from_u64(5);
        let mut b = StdRng::seed_from_u64(5);
        assert_eq!(
            generate_sample(&cfg, &mut a, true).unwrap(),
            generate_sample(&cfg, &mut b, true).unwrap()
        );
        assert!(ProsQaConfig::small().validate().is_ok());
        let bad = ProsQaConfig { max_steps: 2, ..ProsQaConfig::default() };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("max_steps"), "{err}");
    }
}
