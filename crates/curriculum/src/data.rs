//! Samples and the three file formats they come in.
//!
//! Every dataset is a list of `{question, steps, answer}` samples (docs/DESIGN.md, "Data"):
//! - `.json`: the Coconut JSON array (ProsQA and ProntoQA carry extra graph fields, ignored);
//! - `.txt`: iCoT lines `question||<<a=b>> <<c=d>> #### ans` (GSM8k-Aug);
//! - `.jsonl`: the original GSM8k `{question, answer}` lines, the answer holding `<<a=b>>`
//!   calculator annotations and ending with `#### n`.
//!
//! Loaders never skip a bad sample: an empty file, a malformed record or an empty answer is an
//! error that names the file, the sample index or line number, and the field.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CurriculumError;

/// One reasoning sample: a question, its chain of language reasoning steps and the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The question, as given to the model before any reasoning.
    pub question: String,
    /// The language reasoning steps, in order; the curriculum replaces the first k of them.
    pub steps: Vec<String>,
    /// The final answer, without the `### ` prefix the model is trained to emit.
    pub answer: String,
}

/// Loads samples from `path`, picking the format from the extension: `.json` (Coconut JSON
/// array), `.txt` (iCoT lines) or `.jsonl` (original GSM8k).
pub fn load_samples(path: &Path) -> Result<Vec<Sample>, CurriculumError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => load_coconut_json(path),
        Some("txt") => load_icot_lines(path),
        Some("jsonl") => load_gsm8k_jsonl(path),
        _ => Err(CurriculumError::UnknownFormat { path: path.to_path_buf() }),
    }
}

/// Loads a Coconut JSON array of `{question, steps, answer}` objects; other fields are ignored.
pub fn load_coconut_json(path: &Path) -> Result<Vec<Sample>, CurriculumError> {
    let text = read(path)?;
    // Parse to `Value` first rather than straight into `Vec<Sample>`: serde's message would
    // give a line and column, but not which sample or which field is at fault.
    let value: Value = serde_json::from_str(&text)
        .map_err(|error| CurriculumError::Json { path: path.to_path_buf(), error })?;
    let Value::Array(items) = value else {
        return Err(CurriculumError::Field {
            path: path.to_path_buf(),
            location: "top level".into(),
            field: "(root)".into(),
            reason: format!("expected a JSON array of samples, found {}", kind(&value)),
        });
    };
    let samples = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = Location { path, location: format!("sample {i}") };
            let question = at.string_field(item, "question")?;
            let steps = at.steps_field(item)?;
            let answer = at.string_field(item, "answer")?;
            at.check(Sample { question, steps, answer })
        })
        .collect::<Result<Vec<_>, _>>()?;
    non_empty(path, samples)
}

/// Loads iCoT lines `question||<<a=b>> <<c=d>> #### ans`.
///
/// As in the reference conversion (`preprocessing/gsm_icot.py`): question = text before `||`;
/// steps = the part after `||` and before the first `##`, stripped and split on single spaces;
/// answer = the text after the last `##`, stripped. A line without steps therefore gives one
/// empty step `[""]`, exactly as Python's `"".split(" ")` does and as the released
/// `gsm_*.json` files hold it.
pub fn load_icot_lines(path: &Path) -> Result<Vec<Sample>, CurriculumError> {
    let text = read(path)?;
    let samples = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let at = Location { path, location: format!("line {}", i + 1) };
            let Some((question, rest)) = line.split_once("||") else {
                return Err(at.field("question", "no `||` separating question and steps"));
            };
            // The reference unpacks `line.split("||")` into two parts: a second `||` is an
            // ambiguous line, not something to guess about.
            if rest.contains("||") {
                return Err(at.field("question", "more than one `||` on the line"));
            }
            if !rest.contains("####") {
                return Err(at.field("answer", "no `####` before the answer"));
            }
            let steps_part = rest.split("##").next().unwrap_or_default();
            let answer = rest.rsplit("##").next().unwrap_or_default();
            at.check(Sample {
                question: question.to_string(),
                steps: steps_part.trim().split(' ').map(str::to_string).collect(),
                answer: answer.trim().to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    non_empty(path, samples)
}

/// Loads the original GSM8k JSONL (`{"question": .., "answer": ".. <<a=b>>b .. #### n"}`).
///
/// steps = the `<<...>>` calculator annotations of the answer, in order and with their
/// brackets (the form the iCoT files use); answer = the text after `####`, stripped, with
/// thousands commas removed (`1,000` -> `1000`, as evaluation compares answers).
pub fn load_gsm8k_jsonl(path: &Path) -> Result<Vec<Sample>, CurriculumError> {
    let text = read(path)?;
    let samples = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let at = Location { path, location: format!("line {}", i + 1) };
            let item: Value = serde_json::from_str(line)
                .map_err(|e| at.field("(record)", &format!("invalid JSON: {e}")))?;
            let question = at.string_field(&item, "question")?;
            let solution = at.string_field(&item, "answer")?;
            let Some((reasoning, answer)) = solution.rsplit_once("####") else {
                return Err(at.field("answer", "no `####` before the final answer"));
            };
            at.check(Sample {
                question,
                steps: annotations(reasoning),
                answer: answer.trim().replace(',', ""),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    non_empty(path, samples)
}

/// Writes `samples` to `path` as a pretty-printed Coconut JSON array.
pub fn save_samples(path: &Path, samples: &[Sample]) -> Result<(), CurriculumError> {
    let io_err = |error| CurriculumError::Io { path: path.to_path_buf(), error };
    let file = fs::File::create(path).map_err(io_err)?;
    let mut writer = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut writer, samples)
        .map_err(|error| CurriculumError::Json { path: path.to_path_buf(), error })?;
    writer.write_all(b"\n").map_err(io_err)?;
    writer.flush().map_err(io_err)
}

/// The `<<...>>` annotations of a GSM8k solution, in order, brackets kept. Like the regex
/// `<<.*?>>`: each one ends at the first `>>` after its `<<`.
fn annotations(solution: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = solution;
    while let Some(start) = rest.find("<<") {
        let Some(len) = rest[start + 2..].find(">>") else {
            break;
        };
        let end = start + 2 + len + 2;
        out.push(rest[start..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// The largest data file read: ten times GSM8k's augmented training set, far below what
/// would exhaust a machine's memory once parsed.
pub const MAX_DATA_FILE_BYTES: u64 = 4 << 30;

/// The text of the data file `path`, which must be a regular file (a link is followed) of at
/// most [`MAX_DATA_FILE_BYTES`]: a device such as `/dev/zero` or a pipe would be read without
/// end.
fn read(path: &Path) -> Result<String, CurriculumError> {
    let io_error = |error| CurriculumError::Io { path: path.to_path_buf(), error };
    let not_data =
        |reason: String| CurriculumError::NotDataFile { path: path.to_path_buf(), reason };
    let file = fs::File::open(path).map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.is_file() {
        let what = if metadata.is_dir() { "a folder" } else { "a device, pipe or socket" };
        return Err(not_data(format!("not a regular file ({what}): a data file must be one")));
    }
    let too_large = |size: u64| {
        not_data(format!(
            "{size} bytes or more: a data file may hold at most {MAX_DATA_FILE_BYTES} bytes"
        ))
    };
    if metadata.len() > MAX_DATA_FILE_BYTES {
        return Err(too_large(metadata.len()));
    }
    // Bounded even if the file grows while it is read.
    let mut text = String::new();
    std::io::Read::take(file, MAX_DATA_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() as u64 > MAX_DATA_FILE_BYTES {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
}

fn non_empty(path: &Path, samples: Vec<Sample>) -> Result<Vec<Sample>, CurriculumError> {
    if samples.is_empty() {
        return Err(CurriculumError::Empty { path: path.to_path_buf() });
    }
    Ok(samples)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a record sits (file plus `sample i` / `line n`), to build errors that name it.
struct Location<'a> {
    path: &'a Path,
    location: String,
}

impl Location<'_> {
    fn field(&self, field: &str, reason: &str) -> CurriculumError {
        CurriculumError::Field {
            path: self.path.to_path_buf(),
            location: self.location.clone(),
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    fn string_field(&self, item: &Value, field: &str) -> Result<String, CurriculumError> {
        match item.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => {
                Err(self.field(field, &format!("expected a string, found {}", kind(other))))
            }
            None if !item.is_object() => {
                Err(self.field(field, &format!("the record is {}, not an object", kind(item))))
            }
            None => Err(self.field(field, "missing")),
        }
    }

    fn steps_field(&self, item: &Value) -> Result<Vec<String>, CurriculumError> {
        match item.get("steps") {
            Some(Value::Array(steps)) => steps
                .iter()
                .enumerate()
                .map(|(j, step)| match step {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.field(
                        &format!("steps[{j}]"),
                        &format!("expected a string, found {}", kind(other)),
                    )),
                })
                .collect(),
            Some(other) => Err(self
                .field("steps", &format!("expected an array of strings, found {}", kind(other)))),
            None => Err(self.field("steps", "missing")),
        }
    }

    /// Rejects samples no training or evaluation can use.
    fn check(&self, sample: Sample) -> Result<Sample, CurriculumError> {
        if sample.question.trim().is_empty() {
            return Err(self.field("question", "empty"));
        }
        if sample.answer.trim().is_empty() {
            return Err(self.field("answer", "empty"));
        }
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A device behind a link (`/dev/zero` would be read without end) and a folder are
    /// refused before anything is read, naming the path given.
    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("train.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = load_samples(&link).unwrap_err().to_string();
        assert!(err.contains("train.json") && err.contains("not a regular file"), "{err}");
        let folder = dir.path().join("valid.json");
        std::fs::create_dir(&folder).unwrap();
        let err = load_samples(&folder).unwrap_err().to_string();
        assert!(err.contains("valid.json") && err.contains("a folder"), "{err}");
    }

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/")).join(rel)
    }

    /// Writes `content` to a temporary file with the given extension.
    fn temp(ext: &str, content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(&format!(".{ext}")).tempfile().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    fn err_text(r: Result<Vec<Sample>, CurriculumError>) -> String {
        r.expect_err("malformed input must be an error").to_string()
    }

    #[test]
    fn prosqa_valid_has_300_samples_with_steps() {
        let s = load_samples(&fixture("datasets/prosqa/prosqa_valid.json")).unwrap();
        assert_eq!(s.len(), 300);
        assert_eq!(s[0].steps.len(), 3);
        assert_eq!(s[0].answer, "Tom is a lempus.");
        assert!(s[0].question.ends_with("Is Tom a lempus or scrompus?"));
        // docs/DESIGN.md, "Data": 3 to 6 steps, 3.8 on average.
        assert!(s.iter().all(|x| (3..=6).contains(&x.steps.len())));
    }

    #[test]
    fn prontoqa_valid_has_200_samples_of_six_steps() {
        let s = load_samples(&fixture("datasets/prontoqa/prontoqa_valid.json")).unwrap();
        assert_eq!(s.len(), 200);
        assert!(s.iter().all(|x| x.steps.len() == 6));
        assert!(s.iter().all(|x| x.answer == "True" || x.answer == "False"));
    }

    #[test]
    fn gsm_json_and_icot_lines_give_the_same_samples() {
        let json = load_samples(&fixture("datasets/gsm8k/gsm_valid.json")).unwrap();
        let icot = load_samples(&fixture("datasets/gsm8k/icot_gsm8k_valid.txt")).unwrap();
        assert_eq!(json.len(), 200);
        assert_eq!(json, icot);
        assert_eq!(icot[0].steps, ["<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>"]);
        assert_eq!(icot[0].answer, "300");
        // A line with no steps keeps Python's `"".split(" ") == [""]`, as the JSON has it.
        assert!(icot.iter().any(|x| x.steps == [""]));
    }

    #[test]
    fn gsm8k_jsonl_test_matches_the_augmented_test_set() {
        let orig = load_samples(&fixture("datasets/gsm8k/gsm8k_test.jsonl")).unwrap();
        let aug = load_samples(&fixture("datasets/gsm8k/gsm_test.json")).unwrap();
        assert_eq!(orig.len(), 200);
        assert_eq!(orig[0].steps, ["<<16-3-4=9>>", "<<9*2=18>>"]);
        assert_eq!(orig[0].answer, "18");
        // Same questions in the same order; GSM8k-Aug rewrote a few solutions, so the
        // annotations and answers agree on most but not all samples.
        assert!(orig.iter().zip(&aug).all(|(o, a)| o.question == a.question));
        let same_steps = orig.iter().zip(&aug).filter(|(o, a)| o.steps == a.steps).count();
        let same_answer = orig.iter().zip(&aug).filter(|(o, a)| o.answer == a.answer).count();
        assert!(same_steps >= 190, "{same_steps}");
        assert!(same_answer >= 190, "{same_answer}");
        assert!(same_steps < orig.len(), "the fixture holds rewritten solutions too");
        assert!(orig.iter().all(|s| !s.answer.contains(',')));
    }

    #[test]
    fn save_then_load_round_trips() {
        let samples = vec![Sample {
            question: "Q \"quoted\"\nline".into(),
            steps: vec!["a".into(), "b".into()],
            answer: "42".into(),
        }];
        let f = temp("json", "");
        save_samples(f.path(), &samples).unwrap();
        assert_eq!(load_samples(f.path()).unwrap(), samples);
    }

    #[test]
    fn coconut_json_ignores_extra_fields() {
        let f = temp(
            "json",
            r#"[{"question": "q", "steps": ["s"], "answer": "a", "edges": [[0, 1]]}]"#,
        );
        let s = load_coconut_json(f.path()).unwrap();
        assert_eq!(s[0].steps, ["s"]);
    }

    #[test]
    fn coconut_json_errors_name_file_sample_and_field() {
        let f = temp(
            "json",
            r#"[{"question": "q", "steps": [], "answer": "a"},
                {"question": "q", "steps": ["s", 3], "answer": "a"}]"#,
        );
        let e = err_text(load_samples(f.path()));
        let name = f.path().file_name().unwrap().to_str().unwrap();
        assert!(e.contains(name) && e.contains("sample 1") && e.contains("steps[1]"), "{e}");

        let f = temp("json", r#"[{"question": "q", "steps": []}]"#);
        let e = err_text(load_samples(f.path()));
        assert!(e.contains("sample 0") && e.contains("`answer`") && e.contains("missing"), "{e}");

        let f = temp("json", r#"[{"question": "q", "steps": [], "answer": " "}]"#);
        let e = err_text(load_samples(f.path()));
        assert!(e.contains("sample 0") && e.contains("`answer`") && e.contains("empty"), "{e}");

        let f = temp("json", r#"[{"question": "q", "#);
        assert!(err_text(load_samples(f.path())).contains("invalid JSON"));

        let f = temp("json", r#"{"question": "q"}"#);
        assert!(err_text(load_samples(f.path())).contains("expected a JSON array"));

        let f = temp("json", "[]");
        assert!(err_text(load_samples(f.path())).contains("no samples"));
    }

    #[test]
    fn icot_errors_name_the_line_and_field() {
        let f = temp("txt", "q||<<1=1>> #### 1\nno separator #### 2\n");
        let e = err_text(load_samples(f.path()));
        assert!(e.contains("line 2") && e.contains("`question`") && e.contains("||"), "{e}");

        let f = temp("txt", "q||<<1=1>> #### 1\nq||<<1=1>> 1\n");
        let e = err_text(load_samples(f.path()));
        assert!(e.contains("line 2") && e.contains("`answer`") && e.contains("####"), "{e}");

        let f = temp("txt", "q||<<1=1>> ####  \n");
        let e = err_text(load_samples(f.path()));
        assert!(e.contains("line 1") && e.contains("empty"), "{e}");

        let f = temp("txt", "");
        assert!(err_text(load_samples(f.path())).contains("no samples"));
    }

    #[test]
    fn icot_line_parsing_follows_the_reference() {
        let f = temp("txt", "How many?||<<2*3=6>> <<6+1=7>> #### 7\n");
        let s = load_icot_lines(f.path()).unwrap();
        assert_eq!(
            s,
            [Sample {
                question: "How many?".into(),
                steps: vec!["<<2*3=6>>".into(), "<<6+1=7>>".into()],
                answer: "7".into(),
            }]
        );
    }

    #[test]
    fn gsm8k_jsonl_parsing_and_errors() {
        let f = temp(
            "jsonl",
            concat!(
                r#"{"question": "Q?", "answer": "It is 1,000 + 2 = <<1000+2=1002>>1002.\nThen <<1002*2=2004>>.\n#### 2,004"}"#,
                "\n",
                r#"{"question": "Q?", "answer": "no final marker"}"#,
                "\n"
            ),
        );
        let e = err_text(load_samples(f.path()));
        assert!(e.contains("line 2") && e.contains("`answer`") && e.contains("####"), "{e}");

        let content = std::fs::read_to_string(f.path()).unwrap();
        let first = temp("jsonl", content.lines().next().unwrap());
        let s = load_gsm8k_jsonl(first.path()).unwrap();
        assert_eq!(s[0].steps, ["<<1000+2=1002>>", "<<1002*2=2004>>"]);
        assert_eq!(s[0].answer, "2004");

        let f = temp("jsonl", "{\"answer\": \"#### 1\"}\n");
        let e = err_text(load_samples(f.path()));
        assert!(e.contains("line 1") && e.contains("`question`") && e.contains("missing"), "{e}");

        let f = temp("jsonl", "{\"question\": \"q\", \"answer\": \"#### 1\"}\nnot json\n");
        let e = err_text(load_samples(f.path()));
        assert!(e.contains("line 2") && e.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn unknown_extension_and_missing_file_are_errors() {
        let f = temp("csv", "a,b");
        assert!(err_text(load_samples(f.path())).contains("unknown data format"));
        let e = err_text(load_samples(Path::new("does/not/exist.json")));
        assert!(e.contains("does/not/exist.json"), "{e}");
    }
}
