//! Histogram buckets: the defaults, and the checks of a user's bounds.

use crate::error::{BuildError, BuildErrorKind};

/// The default bucket bounds of both histograms, in seconds: 1 µs to 5 min,
/// in steps of 1, 2.5 and 5 per decade. Thread-pool waits are often a few
/// microseconds; batch tasks can take minutes.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    60.0,
    120.0,
    300.0,
];

/// How a histogram's buckets are chosen.
#[derive(Debug, Clone, PartialEq)]
enum BucketSpec {
    Explicit(Vec<f64>),
    Exponential { min: f64, max: f64, factor: f64 },
}

pub(super) fn resolve_buckets(
    explicit: &Option<Vec<f64>>,
    exponential: &Option<(f64, f64, f64)>,
    which: &str,
) -> Result<Vec<f64>, BuildError> {
    let err = |why: String| BuildError::new(BuildErrorKind::Buckets(format!("{which}: {why}")));
    let spec = match (explicit, exponential) {
        (Some(_), Some(_)) => {
            return Err(err(
                "both an explicit list and exponential buckets were given; choose one".into(),
            ))
        }
        (Some(list), None) => BucketSpec::Explicit(list.clone()),
        (None, Some((min, max, factor))) => BucketSpec::Exponential {
            min: *min,
            max: *max,
            factor: *factor,
        },
        (None, None) => return Ok(DEFAULT_BUCKETS.to_vec()),
    };
    let bounds = match spec {
        BucketSpec::Explicit(list) => list,
        BucketSpec::Exponential { min, max, factor } => {
            if !(min.is_finite() && max.is_finite() && factor.is_finite()) {
                return Err(err("min, max and factor must be finite numbers".into()));
            }
            if min <= 0.0 {
                return Err(err(format!("min must be greater than 0, got {min}")));
            }
            if factor <= 1.0 {
                return Err(err(format!("factor must be greater than 1, got {factor}")));
            }
            if max < min {
                return Err(err(format!(
                    "max ({max}) must not be less than min ({min})"
                )));
            }
            let mut bounds = Vec::new();
            let mut bound = min;
            // `bound / max`, not `max * (1 + e)`: the latter is +Inf for a
            // `max` near `f64::MAX`, and the loop would never reach it.
            while bound.is_finite() && bound / max <= 1.0 + 1e-9 && bounds.len() <= 1000 {
                bounds.push(bound);
                bound *= factor;
            }
            if bounds.len() > 1000 {
                return Err(err("more than 1000 buckets; raise the factor".into()));
            }
            bounds
        }
    };
    if bounds.is_empty() {
        return Err(err("the list is empty".into()));
    }
    if bounds.len() > 1000 {
        return Err(err(format!(
            "{} bounds; at most 1000 (each is a series per pool and result, in every scrape)",
            bounds.len()
        )));
    }
    for (i, b) in bounds.iter().enumerate() {
        if !b.is_finite() {
            return Err(err(format!(
                "bound {b} is not a finite number (+Inf is always added)"
            )));
        }
        if *b < 0.0 {
            return Err(err(format!(
                "bound {b} is negative; times are never negative"
            )));
        }
        if i > 0 && bounds[i - 1] >= *b {
            return Err(err(format!(
                "bounds must be strictly increasing ({} then {b})",
                bounds[i - 1]
            )));
        }
    }
    Ok(bounds)
}

pub(super) fn validate_namespace(namespace: &str) -> Result<(), BuildError> {
    let err = |why: String| BuildError::new(BuildErrorKind::Namespace(why));
    let mut chars = namespace.chars();
    match chars.next() {
        None => return Err(err("it is empty".into())),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err(err(format!(
                "{namespace:?} must start with a letter or '_'"
            )))
        }
        _ => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(err(format!(
            "{namespace:?} contains {c:?}; use letters, digits and '_'"
        )));
    }
    Ok(())
}
