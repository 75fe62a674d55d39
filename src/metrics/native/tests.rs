//! The bucket math against its definition, exactly on the bounds.
use super::*;

/// `x` times itself `2^times` times, on little-endian 64-bit limbs.
fn power_of_power(x: u64, times: u32) -> Vec<u64> {
    let mut n = vec![x];
    for _ in 0..times {
        let mut out = vec![0u64; 2 * n.len()];
        for (i, &a) in n.iter().enumerate() {
            let mut carry = 0u128;
            for (j, &b) in n.iter().enumerate() {
                let t = u128::from(a) * u128::from(b) + u128::from(out[i + j]) + carry;
                out[i + j] = t as u64;
                carry = t >> 64;
            }
            out[i + n.len()] = carry as u64;
        }
        while out.last() == Some(&0) {
            out.pop();
        }
        n = out;
    }
    n
}

fn bit_length(n: &[u64]) -> u64 {
    let top = n.last().copied().unwrap_or(0);
    (n.len() as u64 - 1) * 64 + u64::from(64 - top.leading_zeros())
}

/// Each bound is the `f64` nearest to `2^(k/256)`: with `x = M / 2^52`,
/// `(M - 1/2)^256 < 2^(k + 52*256) < (M + 1/2)^256`, compared as the odd
/// integers `(2M -+ 1)^256` against `2^(k + 53*256)` by their bit lengths
/// (an odd number is never a power of two).
#[test]
fn bounds_are_the_nearest_doubles_to_the_exact_powers() {
    for (k, &fraction) in BOUNDS.iter().enumerate() {
        let m = (1u64 << 52) | fraction;
        let p = k as u64 + 53 * 256;
        let below = power_of_power(2 * m - 1, 8);
        let above = power_of_power(2 * m + 1, 8);
        assert!(bit_length(&below) <= p, "bound {k} is too high");
        assert!(bit_length(&above) > p, "bound {k} is too low");
    }
}

/// The upper bound of bucket `i` of `schema`, as an `f64`.
fn upper_bound(i: i32, schema: i8) -> f64 {
    if schema > 0 {
        let per = 1i32 << schema;
        let (exp, within) = (i.div_euclid(per), i.rem_euclid(per));
        let fraction = BOUNDS[(within << (8 - schema)) as usize];
        f64::from_bits(((exp + 1023) as u64) << 52 | fraction)
    } else {
        2f64.powi(i << -schema)
    }
}

fn next_up(x: f64) -> f64 {
    f64::from_bits(x.to_bits() + 1)
}

fn next_down(x: f64) -> f64 {
    f64::from_bits(x.to_bits() - 1)
}

/// A value equal to a bucket's upper bound is in that bucket; the next
/// `f64` up is in the next one, the next down still in it.
#[test]
fn a_value_on_a_bound_is_in_the_bucket_below_and_the_next_float_above() {
    for schema in MIN_SCHEMA..=MAX_SCHEMA {
        // 1 ns to about 3 hours, every bucket.
        let (low, high) = (index(1e-9, schema), index(1e4, schema));
        for i in low..=high {
            let bound = upper_bound(i, schema);
            assert_eq!(index(bound, schema), i, "{bound} at schema {schema}");
            assert_eq!(index(next_down(bound), schema), i, "below {bound}");
            assert_eq!(index(next_up(bound), schema), i + 1, "above {bound}");
        }
    }
}

#[test]
fn known_values_land_in_their_buckets() {
    // Schema 0: bucket i is (2^(i-1), 2^i].
    assert_eq!(index(1.0, 0), 0);
    assert_eq!(index(1.5, 0), 1);
    assert_eq!(index(2.0, 0), 1);
    assert_eq!(index(0.5, 0), -1);
    assert_eq!(index(0.75, 0), 0);
    // Schema -1: base 4, bucket 0 is (1/4, 1].
    assert_eq!(index(0.3, -1), 0);
    assert_eq!(index(0.25, -1), -1);
    assert_eq!(index(4.0, -1), 1);
    assert_eq!(index(4.5, -1), 2);
    // Schema 3: base 2^(1/8); 1 ms is 2^-9.966, so bucket ceil(-79.7).
    assert_eq!(index(0.001, 3), -79);
    assert_eq!(index(1.0, 3), 0);
    assert_eq!(index(f64::from_bits(0x3ff0_0000_0000_0001), 3), 1);
    // Schema 8 around one second.
    assert_eq!(index(1.0, 8), 0);
    assert_eq!(index(2.0, 8), 256);
    assert_eq!(index(2.5, 8), 256 + 83); // log2(1.25) * 256 = 82.4
                                         // Against the logarithm, away from the bounds.
    for schema in MIN_SCHEMA..=MAX_SCHEMA {
        for n in [3u64, 17, 999, 12_345, 7_777_777, 1 << 40] {
            let v = n as f64 / 1e9;
            let exact = v.log2() * 2f64.powi(schema.into());
            if (exact - exact.round()).abs() > 1e-6 {
                assert_eq!(index(v, schema), exact.ceil() as i32, "{v} at {schema}");
            }
        }
    }
}

/// Lowering the schema by one puts every value where indexing it at the
/// lower schema does.
#[test]
fn a_lower_schema_merges_buckets_where_indexing_puts_them() {
    for schema in MIN_SCHEMA + 1..=MAX_SCHEMA {
        for n in (1..4000u64).map(|k| k * k * 7919) {
            let v = seconds(n);
            let merged = reduce(&[(index(v, schema), 1)]);
            assert_eq!(merged, [(index(v, schema - 1), 1)], "{v} at {schema}");
        }
        for i in index(1e-9, schema)..index(1e3, schema) {
            let bound = upper_bound(i, schema);
            let merged = reduce(&[(i, 1)]);
            assert_eq!(merged, [(index(bound, schema - 1), 1)], "{bound}");
        }
    }
}

#[test]
fn spans_and_deltas_encode_the_buckets() {
    let buckets = vec![(-5, 3), (-4, 1), (-1, 2), (10, 7), (11, 7), (40, 1)];
    let h = NativeHistogram::from_buckets(3, 4, buckets.clone());
    assert_eq!(h.schema, 3);
    assert_eq!(h.count, 4 + 3 + 1 + 2 + 7 + 7 + 1);
    assert_eq!(h.zero_count, 4);
    assert_eq!(h.zero_threshold, ZERO_THRESHOLD);
    // -3 and -2 filled in as empty buckets; a new span for 10 and for 40.
    assert_eq!(h.spans, [(-5, 5), (10, 2), (28, 1)]);
    assert_eq!(h.deltas, [3, -2, -1, 0, 2, 5, 0, -6]);
    let nonempty: Vec<_> = h.buckets().into_iter().filter(|b| b.1 != 0).collect();
    assert_eq!(nonempty, buckets);
    let empty = NativeHistogram::from_buckets(3, 0, Vec::new());
    assert_eq!((empty.spans.len(), empty.count), (0, 0));
}

#[test]
fn more_than_the_bound_of_buckets_lowers_the_schema() {
    let buckets: Vec<(i32, u64)> = (100..500).map(|i| (i, 1)).collect();
    let h = NativeHistogram::from_buckets(8, 0, buckets);
    // 400 buckets, 200 at schema 7, 100 (at most 160) at schema 6.
    assert_eq!(h.schema, 6);
    assert!(h.buckets().len() <= MAX_BUCKETS);
    assert_eq!(h.count, 400);
    let h = NativeHistogram::from_buckets(3, 0, (0..MAX_BUCKETS as i32).map(|i| (i, 1)).collect());
    assert_eq!(h.schema, 3, "exactly the bound keeps the schema");
}

/// A shard's counts, chunks and all, read back as the buckets indexing
/// gives, with memory only for the chunks durations landed in.
#[test]
fn recorded_durations_read_back_in_their_buckets() {
    for schema in [MIN_SCHEMA, -1, 0, 3, 7, MAX_SCHEMA] {
        let layout = Layout::new(schema);
        let buckets = NativeBuckets::new(layout);
        let durations = [0u64, 0, 1, 999, 1000, 1001, 5_000_000, 5_000_000, u64::MAX];
        for &n in &durations {
            buckets.counter(n).fetch_add(1, Ordering::Relaxed);
        }
        let allocated = buckets
            .chunks
            .iter()
            .filter(|c| !c.load(Ordering::Relaxed).is_null())
            .count();
        assert!(allocated <= 5, "{allocated} chunks at schema {schema}");
        let mut totals = NativeTotals::new(layout);
        buckets.add_to(&mut totals);
        buckets.add_to(&mut totals);
        let h = totals.histogram();
        let mut expected: BTreeMap<i32, u64> = BTreeMap::new();
        for &n in durations.iter().filter(|&&n| n > 0) {
            *expected.entry(index(seconds(n), schema)).or_default() += 2;
        }
        let nonempty: Vec<_> = h.buckets().into_iter().filter(|b| b.1 != 0).collect();
        assert_eq!(nonempty, expected.into_iter().collect::<Vec<_>>());
        assert_eq!((h.zero_count, h.count), (4, 2 * durations.len() as u64));
    }
}

/// The search from the top bits finds the bound a full search finds, in at
/// most two steps.
#[test]
fn the_shortcut_search_finds_what_a_full_search_finds() {
    for top in 0..256u64 {
        let start = usize::from(FIRST_BOUND[top as usize]);
        for low in [0, 1, 1 << 20, (1 << 44) - 1] {
            let fraction = top << 44 | low;
            let full = BOUNDS.partition_point(|&b| b < fraction);
            assert!(
                full >= start && full - start <= 2,
                "{fraction:x}: {start} {full}"
            );
        }
    }
}
