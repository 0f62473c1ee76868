//! The docs' references resolve: every `Type::item`, snake_case name and repository path in
//! backticks in docs/DESIGN.md and README.md names something the code or the repository
//! holds, and every link to a section names a heading. A rename that leaves the docs behind
//! fails here, as a README example that no longer compiles fails its doctest.

use std::path::{Path, PathBuf};

use regex::Regex;

/// The repository's root (xtask's parent folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every file under `dir` whose name ends with one of `endings`.
fn files(dir: &Path, endings: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            files(&path, endings, out);
        } else if endings.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

/// The text a reference may name something in: the Rust and C++ sources, the configs and the
/// scripts.
fn code() -> String {
    let root = root();
    let mut paths = Vec::new();
    for dir in ["crates", "datasets", "xtask", "configs", "scripts"] {
        files(&root.join(dir), &[".rs", ".cpp", ".toml", ".py", ".sh"], &mut paths);
    }
    paths.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect::<Vec<_>>().join("\n")
}

/// Whether `code` defines `name`: an item, a field, an enum variant or a module.
fn defines(code: &str, name: &str) -> bool {
    let name = regex::escape(name);
    let item = format!(r"\b(fn|const|static|struct|enum|trait|type|mod)\s+{name}\b");
    let member = format!(r"(?m)^\s*(pub(\([a-z]+\))?\s+)?{name}\s*([:({{,]|$)");
    Regex::new(&item).unwrap().is_match(code) || Regex::new(&member).unwrap().is_match(code)
}

/// `a/{b,c}.rs` as `a/b.rs` and `a/c.rs`.
fn expand_braces(path: &str) -> Vec<String> {
    match (path.find('{'), path.find('}')) {
        (Some(open), Some(close)) if open < close => path[open + 1..close]
            .split(',')
            .flat_map(|part| {
                expand_braces(&format!("{}{part}{}", &path[..open], &path[close + 1..]))
            })
            .collect(),
        _ => vec![path.to_string()],
    }
}

/// Whether the repository holds `path` (a `*` in the file name matches any characters).
fn exists(path: &str) -> bool {
    let path = root().join(path.trim_end_matches('/'));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    match name.split_once('*') {
        None => path.exists(),
        Some((prefix, suffix)) => std::fs::read_dir(path.parent().unwrap()).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(prefix) && n.ends_with(suffix)
            })
        }),
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (lines in code blocks are not headings).
fn anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if let Some(heading) = line.strip_prefix('#').filter(|_| !in_code) {
            found.push(anchor(heading.trim_start_matches('#').trim()));
        }
    }
    found
}

/// What in `doc` (a path from the root) names nothing.
fn unresolved(doc: &str, code: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(doc)).unwrap();
    let mut missing = Vec::new();
    let snake = Regex::new(r"^[a-z][a-z0-9_]*_[a-z0-9_]*(\(\))?$").unwrap();
    let rust_path = Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)+$").unwrap();
    let repo_path =
        Regex::new(r"^(crates|docs|scripts|xtask|fixtures|configs|datasets/src)/").unwrap();
    for quoted in Regex::new(r"`([^`\n]+)`").unwrap().captures_iter(&text) {
        let token = &quoted[1];
        if snake.is_match(token) {
            let word = token.trim_end_matches("()");
            if !Regex::new(&format!(r"\b{word}\b")).unwrap().is_match(code) {
                missing.push(format!("`{token}` appears nowhere in the code"));
            }
        } else if rust_path.is_match(token) {
            let mut segments = token.rsplit("::");
            let (item, owner) = (segments.next().unwrap(), segments.next().unwrap());
            let owner_exists = owner.starts_with("coconut_") || defines(code, owner);
            if !owner_exists || !defines(code, item) {
                missing.push(format!("`{token}` is not defined"));
            }
        } else if repo_path.is_match(token) && !token.contains(['<', ' ']) {
            for path in expand_braces(token) {
                if !exists(&path) {
                    missing.push(format!("`{path}` does not exist"));
                }
            }
        }
    }
    let here = Path::new(doc).parent().unwrap();
    for link in Regex::new(r"\]\(([^)\s]+)\)").unwrap().captures_iter(&text) {
        let target = &link[1];
        if target.contains("://") {
            continue;
        }
        let (file, section) = target.split_once('#').unwrap_or((target, ""));
        let path = if file.is_empty() { PathBuf::from(doc) } else { here.join(file) };
        let Ok(linked) = std::fs::read_to_string(root().join(&path)) else {
            missing.push(format!("link {target}: no file {}", path.display()));
            continue;
        };
        if !section.is_empty() && !anchors(&linked).iter().any(|a| a == section) {
            missing.push(format!("link {target}: no such heading"));
        }
    }
    missing
}

#[test]
fn design_references_resolve() {
    let missing = unresolved("docs/DESIGN.md", &code());
    assert!(missing.is_empty(), "docs/DESIGN.md:\n{}", missing.join("\n"));
}

#[test]
fn readme_references_resolve() {
    let missing = unresolved("README.md", &code());
    assert!(missing.is_empty(), "README.md:\n{}", missing.join("\n"));
}

#[test]
fn a_stale_reference_is_reported() {
    let code =
        "pub struct DeviceBatch {\n    pub lacks_latent: Vec<Tensor>,\n}\nfn pass_ranges() {}";
    assert!(defines(code, "DeviceBatch") && defines(code, "lacks_latent"));
    assert!(defines(code, "pass_ranges"));
    assert!(!defines(code, "has_latent"));
    assert_eq!(expand_braces("a/{b,c}.rs"), ["a/b.rs", "a/c.rs"]);
    assert_eq!(anchor("Data-parallel training"), "data-parallel-training");
    assert_eq!(anchor("The GPU: `check-device`"), "the-gpu-check-device");
    let markdown = "# Title\n```\n# not a heading\n```\n## A section";
    assert_eq!(anchors(markdown), ["title", "a-section"]);
}
