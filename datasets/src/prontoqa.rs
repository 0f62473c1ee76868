//! ProntoQA-style questions over a fictional ontology (Saparov & He 2022, as used by Coconut),
//! and their checker.
//!
//! Every real 5-hop question has the same skeleton, which this generator reproduces:
//! - a chain of `hops` concepts c1 -> c2 -> ... (each "is a" the next); the person is a c1;
//!   the last concept carries the queried property, possibly negated ("Each numpus is not
//!   cold.");
//! - each other chain concept carries a property of its own, and each chain concept has a side
//!   sub-concept carrying one; the last concept has one more, property-less, sub-concept;
//! - the person is also a member of an unrelated concept that carries a property and has a
//!   property-less parent concept;
//! - one more unrelated concept carries the queried property with the opposite sign, so the
//!   property sentence alone does not give the answer away.
//!
//! With 5 hops that is 23 rules, shuffled, then the two membership facts of the person in
//! random order: 25 sentences, as in the real files. All properties come from distinct
//! families (sizes, colours, tastes, ...) except the distractor's, so no rule contradicts
//! another. The steps pair each membership with the rule it uses, copied from the context
//! ("Alex is a tumpus. Tumpuses are gorpuses."), and end with the conclusion.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::names::{
    capitalized_plural, concept_names, max_concept_names, plural, singular, PRONTOQA_CONCEPTS,
    PRONTOQA_PEOPLE,
};
use crate::{DatasetError, Sample};

const DATASET: &str = "ProntoQA";

/// ProntoQA's property families: members of one family never both describe one question's
/// concepts (except the sign-flipped distractor), which keeps every context consistent.
const FAMILIES: [&[&str]; 13] = [
    &["blue", "red", "brown", "orange"],
    &["small", "large"],
    &["metallic", "wooden", "luminous", "liquid"],
    &["transparent", "opaque"],
    &["nervous", "happy", "feisty", "shy"],
    &["bright", "dull"],
    &["sweet", "sour", "spicy", "bitter"],
    &["floral", "fruity", "earthy"],
    &["hot", "cold", "temperate"],
    &["kind", "mean", "angry", "amenable", "aggressive"],
    &["melodic", "muffled", "discordant", "loud"],
    &["slow", "moderate", "fast"],
    &["windy", "sunny", "overcast", "rainy", "snowy"],
];

/// Shares of negated properties measured on the real 5-hop files (10,000 questions): 27% of
/// the properties of chain concepts, 33% of the others; the queried one is negated half the
/// time.
const NEGATED_CHAIN: f64 = 0.27;
const NEGATED_OTHER: f64 = 0.33;

/// Shape of the generated ontologies and questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProntoQaConfig {
    /// Fewest concepts in the chain from the person to the queried property (steps = hops + 1).
    pub min_hops: usize,
    /// Most concepts in the chain (inclusive).
    pub max_hops: usize,
    /// Every chain concept but the last carries a property of its own.
    pub chain_properties: bool,
    /// Every chain concept has a side sub-concept carrying a property.
    pub side_branches: bool,
    /// The last chain concept has one more, property-less, sub-concept.
    pub extra_leaf: bool,
    /// The person also belongs to an unrelated concept (with a property and a parent concept).
    pub person_distractor: bool,
    /// An unrelated concept carries the queried property with the opposite sign.
    pub property_distractor: bool,
    /// Queries may be negated ("True or false: Alex is not happy."), as in the real files: the
    /// answer is then the XOR of two signs. Without them the query is always positive and the
    /// answer is the sign the chain derives, a smaller task for models trained from scratch.
    pub negated_queries: bool,
    /// Rules take the three surface forms of the real files ("Xuses are Yuses.", "Each X is
    /// a Y.", "Every X is a Y."). Without them every rule reads "Every X is ...", so a concept
    /// is always the same token, which a model trained from scratch matches much sooner.
    pub surface_forms: bool,
}

impl Default for ProntoQaConfig {
    /// The paper's data: 5 hops, every distractor (25 sentences, 6 steps).
    fn default() -> Self {
        Self {
            min_hops: 5,
            max_hops: 5,
            chain_properties: true,
            side_branches: true,
            extra_leaf: true,
            person_distractor: true,
            property_distractor: true,
            negated_queries: true,
            surface_forms: true,
        }
    }
}

impl ProntoQaConfig {
    /// Short questions for fast CPU training: 2 or 3 hops, and only the two distractors that
    /// keep the task from being read off one sentence (the person's second concept, and the
    /// opposite-sign property); about 6 to 7 sentences; queries are never negated, so the
    /// answer is the sign at the end of the chain; every rule reads "Every X is ...".
    pub fn small() -> Self {
        Self {
            min_hops: 2,
            max_hops: 3,
            chain_properties: false,
            side_branches: false,
            extra_leaf: false,
            person_distractor: true,
            property_distractor: true,
            negated_queries: false,
            surface_forms: false,
        }
    }

    /// Property families one question needs at `hops`.
    fn families_needed(&self, hops: usize) -> usize {
        1 + if self.chain_properties { hops - 1 } else { 0 }
            + if self.side_branches { hops } else { 0 }
            + usize::from(self.person_distractor)
    }

    /// Concepts one question needs at `hops`.
    fn concepts_needed(&self, hops: usize) -> usize {
        hops + if self.side_branches { hops } else { 0 }
            + usize::from(self.extra_leaf)
            + 2 * usize::from(self.person_distractor)
            + usize::from(self.property_distractor)
    }

    /// Checks every field once, so generation can rely on them.
    pub fn validate(&self) -> Result<(), DatasetError> {
        let bad = |field, reason: String| {
            Err(DatasetError::InvalidConfig { dataset: DATASET, field, reason })
        };
        if self.min_hops < 1 {
            return bad("min_hops", "must be at least 1".into());
        }
        if self.max_hops < self.min_hops {
            return bad("max_hops", format!("{} < min_hops {}", self.max_hops, self.min_hops));
        }
        let families = self.families_needed(self.max_hops);
        if families > FAMILIES.len() {
            return bad(
                "max_hops",
                format!(
                    "{} hops need {families} property families, only {}",
                    self.max_hops,
                    FAMILIES.len()
                ),
            );
        }
        if self.concepts_needed(self.max_hops) > max_concept_names() {
            return bad("max_hops", format!("{} hops need too many concept names", self.max_hops));
        }
        Ok(())
    }
}

/// (Tests) generates `n` distinct ProntoQA questions from `seed`; exactly `n / 2` of them (rounded at
/// random for odd `n`) are true, in shuffled order.
#[cfg(test)]
fn generate(cfg: &ProntoQaConfig, n: usize, seed: u64) -> Result<Vec<Sample>, DatasetError> {
    crate::generate_distinct(&crate::DatasetConfig::ProntoQa(cfg.clone()), n, seed)
}

/// One rule of the context, rendered once so the steps can quote it word for word.
struct Rule {
    /// "Every X is a Y." / "Each X is a Y." / "Xuses are Yuses." (or a property).
    text: String,
    /// (sub, super) when the rule is "is a".
    is_a: Option<(usize, usize)>,
}

/// Generates one question whose answer is "True" when `answer_true`. The configuration must
/// be valid ([`ProntoQaConfig::validate`]).
pub fn generate_sample(cfg: &ProntoQaConfig, rng: &mut StdRng, answer_true: bool) -> Sample {
    let hops = rng.random_range(cfg.min_hops..=cfg.max_hops);
    let person = PRONTOQA_PEOPLE[rng.random_range(0..PRONTOQA_PEOPLE.len())];
    let mut names = concept_names(cfg.concepts_needed(hops).max(PRONTOQA_CONCEPTS));
    names.shuffle(rng);
    let mut families: Vec<usize> = (0..FAMILIES.len()).collect();
    families.shuffle(rng);
    let mut pool = Pool { families: families.into_iter(), concepts: 0..names.len() };
    let chain: Vec<usize> = (0..hops).map(|_| pool.concept()).collect();
    let last = chain[hops - 1];
    let target_property = pool.property(rng);
    // With positive queries only, the derived sign decides the (balanced) answer.
    let target_negated = if cfg.negated_queries { rng.random_bool(0.5) } else { !answer_true };

    let mut rules: Vec<Rule> = Vec::new();
    let mut chain_rule = vec![0; hops];
    for i in 0..hops - 1 {
        chain_rule[i] = rules.len();
        rules.push(is_a_rule(cfg, &names, chain[i], chain[i + 1], rng));
        if cfg.chain_properties {
            let p = pool.property(rng);
            let negated = rng.random_bool(NEGATED_CHAIN);
            rules.push(property_rule(cfg, &names[chain[i]], p, negated, rng));
        }
    }
    chain_rule[hops - 1] = rules.len();
    rules.push(property_rule(cfg, &names[last], target_property, target_negated, rng));
    let target = (target_property, target_negated);
    let (mut memberships, distractor) =
        distractors(cfg, &names, &chain, &mut pool, &mut rules, target, rng);

    let chain_rules: Vec<&Rule> = chain_rule.iter().map(|&r| &rules[r]).collect();
    let steps = chain_steps(person, &names, &chain, &chain_rules, target_property, target_negated);

    let mut order: Vec<usize> = (0..rules.len()).collect();
    order.shuffle(rng);
    memberships.shuffle(rng);
    let mut sentences: Vec<String> = order.iter().map(|&r| rules[r].text.clone()).collect();
    sentences.extend(memberships.iter().map(|&c| membership(person, &names[c])));
    // The answer is "True" when the query's sign matches the derived one.
    let query_negated = cfg.negated_queries && target_negated == answer_true;
    let question = format!(
        "{} True or false: {person} is {}{target_property}.",
        sentences.join(" "),
        if query_negated { "not " } else { "" }
    );

    let (symbols, index) = graph_symbols(person, &names, &chain, pool.concepts.start);
    // Edges: the "is a" rules, in context order.
    let edges =
        order.iter().filter_map(|&r| rules[r].is_a).map(|(a, b)| [index[&a], index[&b]]).collect();
    Sample {
        question,
        steps,
        answer: if answer_true { "True" } else { "False" }.to_string(),
        idx_to_symbol: Some(symbols),
        edges: Some(edges),
        root: Some(0),
        target: Some(index[&last]),
        neg_target: distractor.map(|z| index[&z]),
        chain_concepts: Some(chain.iter().map(|&c| names[c].clone()).collect()),
    }
}

/// The concepts (indices into the shuffled names) and the property families of one
/// question, each handed out once, in order.
struct Pool {
    families: std::vec::IntoIter<usize>,
    concepts: std::ops::Range<usize>,
}

impl Pool {
    /// A property of the next family.
    fn property(&mut self, rng: &mut StdRng) -> &'static str {
        let family = FAMILIES[self.families.next().expect("validated family count")];
        family[rng.random_range(0..family.len())]
    }

    /// The next concept.
    fn concept(&mut self) -> usize {
        self.concepts.next().expect("validated concept count")
    }
}

/// The rules and memberships that the configuration adds around the chain to mislead: side
/// branches, an extra leaf, a concept the person also belongs to, and a concept with the
/// opposite of the `target` property (its sign). Returns the person's memberships (the
/// chain's first concept first) and that last concept.
fn distractors(
    cfg: &ProntoQaConfig,
    names: &[String],
    chain: &[usize],
    pool: &mut Pool,
    rules: &mut Vec<Rule>,
    target: (&str, bool),
    rng: &mut StdRng,
) -> (Vec<usize>, Option<usize>) {
    let last = chain[chain.len() - 1];
    if cfg.side_branches {
        for &c in chain {
            let side = pool.concept();
            rules.push(is_a_rule(cfg, names, c, side, rng));
            let (p, negated) = (pool.property(rng), rng.random_bool(NEGATED_OTHER));
            rules.push(property_rule(cfg, &names[side], p, negated, rng));
        }
    }
    if cfg.extra_leaf {
        let leaf = pool.concept();
        rules.push(is_a_rule(cfg, names, last, leaf, rng));
    }
    let mut memberships = vec![chain[0]];
    if cfg.person_distractor {
        let (member, parent) = (pool.concept(), pool.concept());
        let (p, negated) = (pool.property(rng), rng.random_bool(NEGATED_OTHER));
        rules.push(property_rule(cfg, &names[member], p, negated, rng));
        rules.push(is_a_rule(cfg, names, member, parent, rng));
        memberships.push(member);
    }
    let mut distractor = None;
    if cfg.property_distractor {
        let z = pool.concept();
        rules.push(property_rule(cfg, &names[z], target.0, !target.1, rng));
        distractor = Some(z);
    }

    (memberships, distractor)
}

/// The reasoning steps: the person's membership of each concept of the chain with the
/// chain's rule from it, then the derived property.
fn chain_steps(
    person: &str,
    names: &[String],
    chain: &[usize],
    chain_rules: &[&Rule],
    target_property: &str,
    target_negated: bool,
) -> Vec<String> {
    let mut steps: Vec<String> = chain
        .iter()
        .zip(chain_rules)
        .map(|(&c, rule)| format!("{} {}", membership(person, &names[c]), rule.text))
        .collect();
    steps.push(format!(
        "{person} is {}{target_property}.",
        if target_negated { "not " } else { "" }
    ));
    steps
}

/// The graph's node names: the person, the chain, then the other `used` concepts in
/// alphabetical order; with each concept's node index.
fn graph_symbols(
    person: &str,
    names: &[String],
    chain: &[usize],
    used: usize,
) -> (Vec<String>, BTreeMap<usize, usize>) {
    let mut others: Vec<usize> = (0..used).filter(|c| !chain.contains(c)).collect();
    others.sort_by(|&a, &b| names[a].cmp(&names[b]));
    let mut index = BTreeMap::new();
    let mut symbols = vec![person.to_string()];
    for &c in chain.iter().chain(&others) {
        index.insert(c, symbols.len());
        symbols.push(names[c].clone());
    }
    (symbols, index)
}

/// "a" or "an", as the real ProntoQA files write it ("an impus").
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn membership(person: &str, concept: &str) -> String {
    format!("{person} is {} {concept}.", article(concept))
}

/// The three surface forms of a rule, with the frequencies of the real files: the plural in
/// half of the rules, "Each" and "Every" in a quarter each.
enum Form {
    Plural,
    Each,
    Every,
}

fn form(cfg: &ProntoQaConfig, rng: &mut StdRng) -> Form {
    if !cfg.surface_forms {
        return Form::Every;
    }
    match rng.random_range(0..4) {
        0 | 1 => Form::Plural,
        2 => Form::Each,
        _ => Form::Every,
    }
}

fn is_a_rule(
    cfg: &ProntoQaConfig,
    names: &[String],
    sub: usize,
    sup: usize,
    rng: &mut StdRng,
) -> Rule {
    let (x, y) = (&names[sub], &names[sup]);
    let text = match form(cfg, rng) {
        Form::Plural => format!("{} are {}.", capitalized_plural(x), plural(y)),
        Form::Each => format!("Each {x} is {} {y}.", article(y)),
        Form::Every => format!("Every {x} is {} {y}.", article(y)),
    };
    Rule { text, is_a: Some((sub, sup)) }
}

fn property_rule(
    cfg: &ProntoQaConfig,
    concept: &str,
    property: &str,
    negated: bool,
    rng: &mut StdRng,
) -> Rule {
    let not = if negated { "not " } else { "" };
    let text = match form(cfg, rng) {
        Form::Plural => format!("{} are {not}{property}.", capitalized_plural(concept)),
        Form::Each => format!("Each {concept} is {not}{property}."),
        Form::Every => format!("Every {concept} is {not}{property}."),
    };
    Rule { text, is_a: None }
}

/// One sentence of a ProntoQA context, read back from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// "Every X is a Y." / "Xuses are Yuses." (`negated`: "... is not a Y").
    IsA {
        /// The sub-concept X.
        sub: String,
        /// The super-concept Y.
        sup: String,
        /// Whether the rule says X is *not* a Y.
        negated: bool,
    },
    /// "Every X is (not) P." / "Xuses are (not) P.".
    Property {
        /// The concept X.
        concept: String,
        /// The adjective P.
        property: String,
        /// Whether the rule says "not".
        negated: bool,
    },
    /// "Alex is a X.".
    Member {
        /// The person.
        person: String,
        /// The concept.
        concept: String,
    },
    /// "Alex is (not) P." (a fact about the person).
    Has {
        /// The person.
        person: String,
        /// The adjective.
        property: String,
        /// Whether it says "not".
        negated: bool,
    },
}

/// Parses one sentence (without its final period); `None` if it follows no known template.
pub fn parse_statement(sentence: &str) -> Option<Statement> {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    match words.as_slice() {
        [quant, x, "is", tail @ ..] if *quant == "Every" || *quant == "Each" => {
            let (negated, tail) = split_not(tail);
            match tail {
                [a, y] if *a == "a" || *a == "an" => {
                    Some(Statement::IsA { sub: x.to_string(), sup: y.to_string(), negated })
                }
                [p] => Some(Statement::Property {
                    concept: x.to_string(),
                    property: p.to_string(),
                    negated,
                }),
                _ => None,
            }
        }
        [xs, "are", tail @ ..] => {
            let sub = singular(&xs.to_lowercase())?.to_string();
            let (negated, tail) = split_not(tail);
            match tail {
                [w] => match singular(w) {
                    Some(y) => Some(Statement::IsA { sub, sup: y.to_string(), negated }),
                    None => {
                        Some(Statement::Property { concept: sub, property: w.to_string(), negated })
                    }
                },
                _ => None,
            }
        }
        [person, "is", tail @ ..] if person.starts_with(char::is_uppercase) => {
            let (negated, tail) = split_not(tail);
            match tail {
                [a, c] if (*a == "a" || *a == "an") && !negated => {
                    Some(Statement::Member { person: person.to_string(), concept: c.to_string() })
                }
                [p] => Some(Statement::Has {
                    person: person.to_string(),
                    property: p.to_string(),
                    negated,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

fn split_not<'a, 'b>(words: &'a [&'b str]) -> (bool, &'a [&'b str]) {
    match words {
        ["not", rest @ ..] => (true, rest),
        _ => (false, words),
    }
}

/// True when the answer ("True"/"False") is what forward chaining over the question's own
/// sentences proves: the person's concepts are closed under the "is a" rules, their properties
/// collected, and the query "P is (not) Q." is true if the derived sign of Q matches it, false
/// if it is the opposite. A question whose property is underivable or contradictory, or any
/// sentence outside the templates, is rejected.
pub fn check_prontoqa_answer(sample: &Sample) -> bool {
    let Some((context, query)) = sample.question.split_once(" True or false: ") else {
        return false;
    };
    let mut statements = Vec::new();
    for sentence in context.split('.').map(str::trim).filter(|s| !s.is_empty()) {
        match parse_statement(sentence) {
            Some(s) => statements.push(s),
            None => return false,
        }
    }
    let Some(Statement::Has { person, property, negated: query_negated }) =
        query.trim().strip_suffix('.').and_then(parse_statement)
    else {
        return false;
    };

    // Forward chaining to a fixpoint over the person's concepts.
    let mut concepts: BTreeSet<&str> = BTreeSet::new();
    for s in &statements {
        if let Statement::Member { person: p, concept } = s {
            if *p == person {
                concepts.insert(concept);
            }
        }
    }
    loop {
        let before = concepts.len();
        for s in &statements {
            if let Statement::IsA { sub, sup, negated: false } = s {
                if concepts.contains(sub.as_str()) {
                    concepts.insert(sup);
                }
            }
        }
        if concepts.len() == before {
            break;
        }
    }
    let mut signs = BTreeSet::new();
    for s in &statements {
        match s {
            Statement::Property { concept, property: p, negated }
                if *p == property && concepts.contains(concept.as_str()) =>
            {
                signs.insert(*negated);
            }
            Statement::Has { person: who, property: p, negated }
                if *who == person && *p == property =>
            {
                signs.insert(*negated);
            }
            _ => {}
        }
    }
    let derived_negated = match signs.len() {
        1 => signs.contains(&true),
        _ => return false, // unprovable, or provable both ways
    };
    let truth = derived_negated == query_negated;
    sample.answer == if truth { "True" } else { "False" }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::stats::DatasetStats;

    fn real(split: &str) -> Vec<Sample> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/datasets/prontoqa/");
        crate::read_samples(std::path::Path::new(&format!("{dir}prontoqa_{split}.json"))).unwrap()
    }

    /// Each step but the last is "P is a C. <a rule of the context>", the rules chain from
    /// the person's concept to the conclusion, and the last step is the conclusion.
    fn steps_follow_the_context(s: &Sample) -> bool {
        let (context, _) = s.question.split_once(" True or false: ").unwrap();
        let (last, pairs) = s.steps.split_last().unwrap();
        let mut expected_concept: Option<String> = None;
        for step in pairs {
            let Some((member, rule)) = step.split_once(". ") else { return false };
            let Some(Statement::Member { concept, .. }) = parse_statement(member) else {
                return false;
            };
            if expected_concept.as_ref().is_some_and(|c| *c != concept)
                || (expected_concept.is_none() && !context.contains(&format!("{member}.")))
                || !context.contains(rule)
            {
                return false;
            }
            expected_concept = match parse_statement(rule.trim_end_matches('.')) {
                Some(Statement::IsA { sub, sup, .. }) if sub == concept => Some(sup),
                Some(Statement::Property { concept: c, .. }) if c == concept => None,
                _ => return false,
            };
        }
        matches!(parse_statement(last.trim_end_matches('.')), Some(Statement::Has { .. }))
    }

    #[test]
    fn checker_accepts_every_real_sample() {
        for (split, n) in [("valid", 200)] {
            let samples = real(split);
            assert_eq!(samples.len(), n);
            for (i, s) in samples.iter().enumerate() {
                assert!(check_prontoqa_answer(s), "real {split} sample {i} rejected");
                assert!(steps_follow_the_context(s), "real {split} sample {i}: steps");
            }
        }
    }

    #[test]
    fn checker_rejects_flipped_answers_and_unknown_sentences() {
        let s = &real("valid")[0];
        let mut flipped = s.clone();
        flipped.answer = if s.answer == "True" { "False" } else { "True" }.into();
        assert!(!check_prontoqa_answer(&flipped));
        let mut garbled = s.clone();
        garbled.question =
            garbled.question.replacen("Tumpuses are floral.", "Tumpuses eat floral.", 1);
        assert!(!check_prontoqa_answer(&garbled));
    }

    #[test]
    fn generated_samples_are_correct_for_both_presets() {
        for cfg in [ProntoQaConfig::default(), ProntoQaConfig::small()] {
            let samples = generate(&cfg, 400, 11).unwrap();
            let trues = samples.iter().filter(|s| s.answer == "True").count();
            assert_eq!(trues, 200);
            for (i, s) in samples.iter().enumerate() {
                assert!(check_prontoqa_answer(s), "sample {i} rejected: {s:?}");
                assert!(steps_follow_the_context(s), "sample {i}: steps {:?}", s.steps);
                let hops = s.chain_concepts.as_ref().unwrap().len();
                assert!((cfg.min_hops..=cfg.max_hops).contains(&hops));
                assert_eq!(s.steps.len(), hops + 1);
            }
        }
    }

    #[test]
    fn paper_preset_has_the_shape_of_the_real_data() {
        let real = real("valid");
        let generated = generate(&ProntoQaConfig::default(), 500, 3).unwrap();
        let sentences = |s: &Sample| s.question.matches(". ").count() + 1;
        assert!(real.iter().all(|s| sentences(s) == 26));
        assert!(generated.iter().all(|s| sentences(s) == 26), "25 facts and the query");
        let (a, b) = (DatasetStats::from_samples(&real), DatasetStats::from_samples(&generated));
        assert_eq!(a.step_histogram, BTreeMap::from([(6, 200)]));
        assert_eq!(b.step_histogram, BTreeMap::from([(6, 500)]));
        let ratio = b.mean_question_words / a.mean_question_words;
        assert!((0.95..1.05).contains(&ratio), "question words: {ratio}");
    }

    #[test]
    fn parser_reads_every_template() {
        use Statement::*;
        let s = |t: &str| parse_statement(t).unwrap();
        assert_eq!(
            s("Tumpuses are gorpuses"),
            IsA { sub: "tumpus".into(), sup: "gorpus".into(), negated: false }
        );
        assert_eq!(
            s("Each grimpus is an impus"),
            IsA { sub: "grimpus".into(), sup: "impus".into(), negated: false }
        );
        assert_eq!(
            s("Numpuses are not metallic"),
            Property { concept: "numpus".into(), property: "metallic".into(), negated: true }
        );
        assert_eq!(
            s("Every lorpus is not happy"),
            Property { concept: "lorpus".into(), property: "happy".into(), negated: true }
        );
        assert_eq!(
            s("Alex is an impus"),
            Member { person: "Alex".into(), concept: "impus".into() }
        );
        assert_eq!(
            s("Alex is not happy"),
            Has { person: "Alex".into(), property: "happy".into(), negated: true }
        );
        assert_eq!(parse_statement("Alex likes cats"), None);
        let mut rng = StdRng::seed_from_u64(1);
        let sample = generate_sample(&ProntoQaConfig::default(), &mut rng, true);
        assert!(sample.question.ends_with('.'));
    }
}
