//! The documents under `docs/` stay true to the code they show.

use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// The diff in docs/migrate-from-threadpool.md, applied to its "before"
/// side, gives examples/migrate_threadpool.rs exactly where it shows it.
#[test]
fn migration_diff_matches_the_example() {
    let doc = read("docs/migrate-from-threadpool.md");
    let example = read("examples/migrate_threadpool.rs");
    let diff = doc
        .split("```diff\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```diff block");
    let example_lines: Vec<&str> = example.lines().collect();
    let mut hunks = 0;
    // Index in the example of the next line on the diff's new side.
    let mut at = None;
    for line in diff.lines() {
        if line.starts_with("@@") {
            // "@@ -a,b +c,d @@": the new side starts at line c.
            let new_side = line
                .split_whitespace()
                .find_map(|part| part.strip_prefix('+'))
                .expect("hunk header");
            let first: usize = new_side.split(',').next().unwrap().parse().unwrap();
            at = Some(first - 1);
            hunks += 1;
            continue;
        }
        let Some(index) = at.as_mut() else {
            continue; // the ---/+++ file header
        };
        if line.starts_with('-') {
            continue;
        }
        let kept = line.strip_prefix(['+', ' ']).unwrap_or(line);
        assert_eq!(
            example_lines.get(*index).copied(),
            Some(kept),
            "line {} of the example differs from the diff",
            *index + 1
        );
        *index += 1;
    }
    assert!(hunks > 0, "no hunk in the diff:\n{diff}");
}

/// Every test or file the README names as the proof of a promise
/// (`` `tests/x.rs::a_test` ``, `` `src/y.rs` ``) exists, so a move or a
/// rename cannot leave a promise pointing at nothing.
#[test]
fn files_and_tests_the_readme_names_exist() {
    let readme = read("README.md");
    let mut checked = 0;
    for span in readme.split('`').skip(1).step_by(2) {
        let (file, name) = match span.split_once("::") {
            Some((file, name)) => (file, Some(name)),
            None => (span, None),
        };
        let rooted = ["src/", "tests/", "examples/", "benches/"]
            .iter()
            .any(|root| file.starts_with(root));
        if !rooted || !file.ends_with(".rs") || file.contains(' ') {
            continue;
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        assert!(path.is_file(), "README names {file}, which does not exist");
        // `file.rs::tests::name`: the test is the last segment.
        if let Some(name) = name.map(|path| path.rsplit("::").next().unwrap_or(path)) {
            let code = read(file);
            assert!(
                code.contains(&format!("fn {name}(")),
                "README names {file}::{name}, which {file} does not define"
            );
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} names found in the README");
}

/// Every test the README's Guarantees list names by itself (`` `a_test_named_as_a_sentence` ``,
/// after a first one with its file) is defined somewhere in the crate's sources or tests.
#[test]
fn tests_the_guarantees_list_names_exist() {
    let readme = read("README.md");
    let guarantees = readme
        .split("\n## Guarantees")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Guarantees section");
    let mut sources = String::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && !name.starts_with('.') && name != "target" {
                dirs.push(path);
            } else if name.ends_with(".rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut checked = 0;
    for span in guarantees.split('`').skip(1).step_by(2) {
        let name = span.rsplit("::").next().unwrap_or(span);
        // Metric families (`executor_…`) are named there too; tests are sentences.
        let looks_like_a_test = name.matches('_').count() >= 3
            && !name.starts_with("executor_")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !looks_like_a_test {
            continue;
        }
        assert!(
            sources.contains(&format!("fn {name}(")),
            "the Guarantees list names `{name}`, which no source defines"
        );
        checked += 1;
    }
    assert!(
        checked > 50,
        "only {checked} test names found in the Guarantees list"
    );
}
