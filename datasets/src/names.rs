//! Names of people and fictional concepts.
//!
//! Concept names are built the way ProntoQA and ProsQA build theirs: an onset ("gr", "st",
//! "zh", or nothing) followed by a rime ending in "-pus" ("impus", "orpus", ...). The first
//! names of [`concept_names`] are exactly the 38 words of the real ProsQA files (the first 17
//! of them are the 17 of the real ProntoQA files), so generated data shares its vocabulary with
//! the real data; further names are built from the same pieces only when a configuration asks
//! for more concepts than that.

/// People of the real ProsQA files (17 names; all of them appear as roots).
pub const PROSQA_PEOPLE: [&str; 17] = [
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly",
    "Rex", "Sally", "Sam", "Stella", "Tom", "Wren",
];

/// People of the real ProntoQA 5-hop files (9 names, all also in [`PROSQA_PEOPLE`]).
pub const PRONTOQA_PEOPLE: [&str; 9] =
    ["Alex", "Fae", "Max", "Polly", "Rex", "Sally", "Sam", "Stella", "Wren"];

/// Number of concept names of the real ProntoQA files (the first ones of [`concept_names`]).
pub const PRONTOQA_CONCEPTS: usize = 17;

/// Number of concept names of the real ProsQA files (the first ones of [`concept_names`]).
pub const PROSQA_CONCEPTS: usize = 38;

/// Onsets that start a concept name ("" gives "impus").
const ONSETS: [&str; 26] = [
    "", "b", "br", "ch", "d", "f", "g", "gr", "gw", "h", "j", "k", "l", "n", "qu", "r", "s", "scr",
    "sh", "st", "t", "v", "w", "y", "z", "zh",
];

/// Rimes that end a concept name; all end in "us", so the plural is always name + "es".
const RIMES: [&str; 9] =
    ["umpus", "orpus", "impus", "erpus", "empus", "ompus", "elpus", "ilpus", "oompus"];

/// The real names as (onset, rime) pairs: ProntoQA's 17 first, then ProsQA's other 21.
const REAL: [(&str, &str); 38] = [
    // ProntoQA (and ProsQA).
    ("w", "umpus"),
    ("y", "umpus"),
    ("z", "umpus"),
    ("d", "umpus"),
    ("r", "ompus"),
    ("n", "umpus"),
    ("t", "umpus"),
    ("v", "umpus"),
    ("", "impus"),
    ("j", "ompus"),
    ("g", "orpus"),
    ("sh", "umpus"),
    ("l", "empus"),
    ("st", "erpus"),
    ("gr", "impus"),
    ("l", "orpus"),
    ("br", "impus"),
    // ProsQA only.
    ("t", "erpus"),
    ("qu", "impus"),
    ("r", "orpus"),
    ("g", "erpus"),
    ("st", "orpus"),
    ("t", "impus"),
    ("b", "ompus"),
    ("y", "erpus"),
    ("f", "ompus"),
    ("f", "elpus"),
    ("w", "orpus"),
    ("zh", "orpus"),
    ("b", "oompus"),
    ("r", "empus"),
    ("scr", "ompus"),
    ("h", "ilpus"),
    ("j", "elpus"),
    ("k", "erpus"),
    ("gw", "ompus"),
    ("y", "impus"),
    ("ch", "orpus"),
];

/// The first `n` concept names: the real ones in a fixed order, then new onset + rime
/// combinations in a fixed order (so a given `n` always yields the same list).
///
/// Panics if `n` exceeds [`max_concept_names`].
pub fn concept_names(n: usize) -> Vec<String> {
    assert!(
        n <= max_concept_names(),
        "asked for {n} concept names, at most {}",
        max_concept_names()
    );
    let mut names: Vec<String> = REAL.iter().map(|(o, r)| format!("{o}{r}")).collect();
    if n > names.len() {
        for rime in RIMES {
            for onset in ONSETS {
                let name = format!("{onset}{rime}");
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names.truncate(n);
    names
}

/// How many distinct concept names the onsets and rimes can build.
pub fn max_concept_names() -> usize {
    ONSETS.len() * RIMES.len()
}

/// Plural of a concept name: "wumpus" -> "wumpuses" (every rime ends in "us").
pub fn plural(concept: &str) -> String {
    format!("{concept}es")
}

/// Singular of a plural concept name ("wumpuses" -> "wumpus"), or `None` for a word that is
/// not one (an adjective such as "happy").
pub fn singular(word: &str) -> Option<&str> {
    word.strip_suffix("es").filter(|w| w.ends_with("us"))
}

/// "Wumpuses" from "wumpus": the plural, capitalised to start a sentence.
pub fn capitalized_plural(concept: &str) -> String {
    let mut chars = concept.chars();
    match chars.next() {
        Some(first) => format!("{}{}es", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_start_with_the_real_vocabulary() {
        let all = concept_names(max_concept_names());
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "duplicate concept names");
        let real = concept_names(PROSQA_CONCEPTS);
        for word in ["wumpus", "impus", "brimpus", "scrompus", "boompus", "chorpus", "hilpus"] {
            assert!(real.iter().any(|n| n == word), "{word} missing");
        }
        assert!(all.iter().all(|n| singular(&plural(n)) == Some(n.as_str())));
        assert_eq!(capitalized_plural("impus"), "Impuses");
        assert_eq!(singular("happy"), None);
        assert!(PRONTOQA_PEOPLE.iter().all(|p| PROSQA_PEOPLE.contains(p)));
    }
}
