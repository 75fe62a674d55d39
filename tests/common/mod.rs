//! Reads metrics back the way Prometheus does: from the text exposition of a
//! registry, parsed here line by line.
#![allow(dead_code)]

use std::collections::BTreeMap;

use executor_exporter::prometheus::{Encoder, Registry, TextEncoder};

/// One parsed sample: metric name, labels (sorted), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one exposition, plus the `# TYPE` and `# HELP` lines.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub text: String,
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
    pub helps: BTreeMap<String, String>,
}

pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("the registry encodes");
    String::from_utf8(buf).expect("the exposition is UTF-8")
}

pub fn scrape(registry: &Registry) -> Exposition {
    parse(&encode(registry))
}

fn unescape_label(raw: &str) -> (String, usize) {
    // `raw` starts right after the opening quote; returns the value and the
    // number of bytes consumed including the closing quote.
    let mut out = String::new();
    let mut chars = raw.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                other => panic!("bad escape {other:?} in {raw:?}"),
            },
            '"' => return (out, i + 1),
            c => out.push(c),
        }
    }
    panic!("unterminated label value in {raw:?}")
}

pub fn parse(text: &str) -> Exposition {
    let mut exp = Exposition {
        text: text.to_owned(),
        ..Default::default()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE line");
            exp.types.insert(name.to_owned(), ty.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP line");
            exp.helps.insert(name.to_owned(), help.to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, mut rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => panic!("bad sample line {line:?}"),
        };
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut s = inner;
            loop {
                if let Some(after) = s.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let s2 = s.strip_prefix(',').unwrap_or(s);
                let eq = s2.find("=\"").expect("label =\"");
                let key = s2[..eq].to_owned();
                let (value, used) = unescape_label(&s2[eq + 2..]);
                labels.insert(key, value);
                s = &s2[eq + 2 + used..];
            }
        }
        let value = rest.trim().split(' ').next().expect("value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        exp.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    exp
}

impl Exposition {
    /// The value of the one sample named `name` whose labels include all of
    /// `labels`; panics if there is none or more than one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one sample {name}{labels:?}, found {found:?}\n{}",
            self.text
        );
        found[0].value
    }

    /// Like `value`, but `None` when there is no such sample.
    pub fn try_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert!(found.len() <= 1, "more than one sample {name}{labels:?}");
        found.first().map(|s| s.value)
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum over every sample named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

/// One sample, comparable across formats: `le` and `quantile` read as
/// numbers (the text format writes `le="1"`, OpenMetrics `le="1.0"`), the
/// value by its bits.
pub type Comparable = (String, BTreeMap<String, String>, u64);

impl Exposition {
    /// Every sample, sorted, as [`Comparable`]s.
    pub fn comparable(&self) -> Vec<Comparable> {
        let mut all: Vec<Comparable> = self
            .samples
            .iter()
            .map(|s| {
                let mut labels = s.labels.clone();
                for key in ["le", "quantile"] {
                    if let Some(v) = labels.get_mut(key) {
                        let n: f64 = match v.as_str() {
                            "+Inf" => f64::INFINITY,
                            other => other.parse().unwrap_or_else(|_| panic!("{key}={other}")),
                        };
                        *v = format!("{n:?}");
                    }
                }
                (s.name.clone(), labels, s.value.to_bits())
            })
            .collect();
        all.sort();
        all
    }

    /// The `# TYPE`s with OpenMetrics' counter families renamed as the text
    /// format names them (`x` counter, whose sample is `x_total`, is `x_total`).
    pub fn types_as_text(&self) -> BTreeMap<String, String> {
        self.types
            .iter()
            .map(|(name, ty)| match ty.as_str() {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), ty.clone()),
                _ => (name.clone(), ty.clone()),
            })
            .collect()
    }

    /// Asserts `self` (OpenMetrics) holds the samples and types of `text`
    /// (the text format), and ends with `# EOF`.
    pub fn assert_same_as_text(&self, text: &Exposition) {
        assert!(
            self.text.ends_with("# EOF\n"),
            "no # EOF at the end:\n{}",
            self.text
        );
        assert_eq!(self.text.matches("# EOF").count(), 1, "{}", self.text);
        let (ours, theirs) = (self.comparable(), text.comparable());
        assert!(!theirs.is_empty(), "no samples to compare");
        if ours != theirs {
            let only_om: Vec<_> = ours.iter().filter(|s| !theirs.contains(s)).collect();
            let only_text: Vec<_> = theirs.iter().filter(|s| !ours.contains(s)).collect();
            panic!(
                "the samples differ\nonly in OpenMetrics: {only_om:#?}\nonly in text: {only_text:#?}\n\
                 --- OpenMetrics ---\n{}\n--- text ---\n{}",
                self.text, text.text
            );
        }
        assert_eq!(self.types_as_text(), text.types, "{}", self.text);
    }
}

/// The counts of one exporter's series, read back from the exposition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts {
    pub submitted: f64,
    pub rejected: f64,
    pub queued: f64,
    pub running: f64,
    pub cancelled: f64,
    pub completed: f64,
    pub failed: f64,
    pub wait_count: f64,
}

pub fn counts(exp: &Exposition, ns: &str, id: &str) -> Counts {
    let l = [("executor", id)];
    let name = |n: &str| format!("{ns}_{n}");
    Counts {
        submitted: exp.sum(&name("submitted_tasks_total"), &l),
        rejected: exp.sum(&name("rejected_tasks_total"), &l),
        queued: exp.sum(&name("queued_tasks"), &l),
        running: exp.sum(&name("running_tasks"), &l),
        cancelled: exp.sum(&name("cancelled_tasks_total"), &l),
        completed: exp.sum(
            &name("tasks_duration_seconds_count"),
            &[("executor", id), ("result", "completed")],
        ),
        failed: exp.sum(
            &name("tasks_duration_seconds_count"),
            &[("executor", id), ("result", "failed")],
        ),
        wait_count: exp.sum(&name("task_wait_seconds_count"), &l),
    }
}

impl Counts {
    /// submitted = queued + running + completed + failed + cancelled.
    pub fn assert_invariant(&self) {
        assert_eq!(
            self.submitted,
            self.queued + self.running + self.completed + self.failed + self.cancelled,
            "invariant broken: {self:?}"
        );
    }
}

/// Runs `f` on another thread and fails the test if it takes longer than
/// `secs` (a deadlock watchdog, not a timing assertion).
pub fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("watchdog: did not finish within {secs} s (deadlock?)"))
}

/// A gate tasks block on until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }
    pub fn wait(&self) {
        let (m, cv) = &*self.0;
        let mut open = m.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }
    pub fn open(&self) {
        let (m, cv) = &*self.0;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Polls `cond` until it holds, failing after `secs` seconds.
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Aborts the whole test binary if the test holding the returned guard runs
/// longer than `limit`: covers the blocking waits no helper wraps (implicit
/// drops and shutdowns at the end of a test), so a hang fails CI instead of
/// blocking it.
#[must_use]
pub fn abort_if_hung(name: &'static str, limit: std::time::Duration) -> impl Drop {
    struct Guard(Option<crossbeam_channel::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.take();
        }
    }
    let (tx, rx) = crossbeam_channel::bounded::<()>(0);
    std::thread::spawn(move || {
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("test {name} hung for {limit:?}: aborting");
            std::process::abort();
        }
    });
    Guard(Some(tx))
}
