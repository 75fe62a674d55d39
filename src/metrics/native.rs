//! Native (sparse, exponential) histograms: which bucket a duration falls
//! in, the per-shard counts, and the buckets one scrape reads.
//!
//! Bucket `i` of schema `s` holds the values in `(base^(i-1), base^i]`,
//! `base = 2^(2^-s)`, as Prometheus defines it. The index of a value is
//! found as the specification's reference does, from the value's binary
//! exponent and fraction (`frexp`) and a table of the bucket bounds within
//! one power of two, so a value on a bound lands exactly where Prometheus
//! puts it (see [`index`]).
//!
//! A shard keeps its counts in chunks of consecutive buckets, allocated the
//! first time a duration lands in one: memory follows the spread of the
//! durations seen, never the whole range a schema can index (16 thousand
//! buckets at schema 8). After that first observation a record is a table
//! search of at most eight steps and one store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The lowest schema Prometheus accepts: each bucket spans 16 powers of two.
pub(crate) const MIN_SCHEMA: i8 = -4;
/// The highest: each power of two split into 256 buckets.
pub(crate) const MAX_SCHEMA: i8 = 8;

/// Most buckets one exposed native histogram has. Durations spread over more
/// buckets than this are exposed at a lower schema (each step down merges
/// pairs of buckets), which Prometheus reads as it reads any schema change.
/// 160, the bound the Prometheus clients recommend: at schema 3 it covers
/// 20 powers of two (1 µs to 1 s) at full resolution.
pub(crate) const MAX_BUCKETS: usize = 160;

/// The breadth of the zero bucket, in seconds: 2^-128, the Prometheus
/// clients' default. Durations are whole nanoseconds, so exactly the
/// durations of 0 ns fall in it (a coarse clock's equal readings).
pub(crate) const ZERO_THRESHOLD: f64 = f64::from_bits(0x37f0_0000_0000_0000);

/// The bits below the exponent of an `f64`.
const FRACTION_BITS: u64 = (1 << 52) - 1;

/// The fraction bits of `2^(k/256)` for `k` in `0..256`, each the nearest
/// `f64` to the exact power (checked by a test with exact integers). The
/// bounds of schema `s > 0` within a power of two are every
/// `2^(8-s)`th entry.
///
/// The Go client's table was built by repeated
/// multiplication and differs from these by one or two units in the last
/// place in most entries: only a duration within that distance of a bound
/// (about 2e-16 of it; a whole number of nanoseconds rarely is) can land in
/// the bucket beside the one the Go client picks.
const BOUNDS: [u64; 256] = [
    0x0000000000000,
    0x00b1afa5abcbf,
    0x0163da9fb3335,
    0x02168143b0281,
    0x02c9a3e778061,
    0x037d42e11bbcc,
    0x04315e86e7f85,
    0x04e5f72f654b1,
    0x059b0d3158574,
    0x0650a0e3c1f89,
    0x0706b29ddf6de,
    0x07bd42b72a836,
    0x0874518759bc8,
    0x092bdf66607e0,
    0x09e3ecac6f383,
    0x0a9c79b1f3919,
    0x0b5586cf9890f,
    0x0c0f145e46c85,
    0x0cc922b7247f7,
    0x0d83b23395dec,
    0x0e3ec32d3d1a2,
    0x0efa55fdfa9c5,
    0x0fb66affed31b,
    0x1073028d7233e,
    0x11301d0125b51,
    0x11edbab5e2ab6,
    0x12abdc06c31cc,
    0x136a814f204ab,
    0x1429aaea92de0,
    0x14e95934f312e,
    0x15a98c8a58e51,
    0x166a45471c3c2,
    0x172b83c7d517b,
    0x17ed48695bbc0,
    0x18af9388c8dea,
    0x1972658375d2f,
    0x1a35beb6fcb75,
    0x1af99f8138a1c,
    0x1bbe084045cd4,
    0x1c82f95281c6b,
    0x1d4873168b9aa,
    0x1e0e75eb44027,
    0x1ed5022fcd91d,
    0x1f9c18438ce4d,
    0x2063b88628cd6,
    0x212be3578a819,
    0x21f49917ddc96,
    0x22bdda27912d1,
    0x2387a6e756238,
    0x2451ffb82140a,
    0x251ce4fb2a63f,
    0x25e85711ece75,
    0x26b4565e27cdd,
    0x2780e341ddf29,
    0x284dfe1f56381,
    0x291ba7591bb70,
    0x29e9df51fdee1,
    0x2ab8a66d10f13,
    0x2b87fd0dad990,
    0x2c57e39771b2f,
    0x2d285a6e4030b,
    0x2df961f641589,
    0x2ecafa93e2f56,
    0x2f9d24abd886b,
    0x306fe0a31b715,
    0x31432edeeb2fd,
    0x32170fc4cd831,
    0x32eb83ba8ea32,
    0x33c08b26416ff,
    0x3496266e3fa2d,
    0x356c55f929ff1,
    0x36431a2de883b,
    0x371a7373aa9cb,
    0x37f26231e754a,
    0x38cae6d05d866,
    0x39a401b7140ef,
    0x3a7db34e59ff7,
    0x3b57fbfec6cf4,
    0x3c32dc313a8e5,
    0x3d0e544ede173,
    0x3dea64c123422,
    0x3ec70df1c5175,
    0x3fa4504ac801c,
    0x40822c367a024,
    0x4160a21f72e2a,
    0x423fb2709468a,
    0x431f5d950a897,
    0x43ffa3f84b9d4,
    0x44e086061892d,
    0x45c2042a7d232,
    0x46a41ed1d0057,
    0x4786d668b3237,
    0x486a2b5c13cd0,
    0x494e1e192aed2,
    0x4a32af0d7d3de,
    0x4b17dea6db7d7,
    0x4bfdad5362a27,
    0x4ce41b817c114,
    0x4dcb299fddd0d,
    0x4eb2d81d8abff,
    0x4f9b2769d2ca7,
    0x508417f4531ee,
    0x516daa2cf6642,
    0x5257de83f4eef,
    0x5342b569d4f82,
    0x542e2f4f6ad27,
    0x551a4ca5d920f,
    0x56070dde910d2,
    0x56f4736b527da,
    0x57e27dbe2c4cf,
    0x58d12d497c7fd,
    0x59c0827ff07cc,
    0x5ab07dd485429,
    0x5ba11fba87a03,
    0x5c9268a5946b7,
    0x5d84590998b93,
    0x5e76f15ad2148,
    0x5f6a320dceb71,
    0x605e1b976dc09,
    0x6152ae6cdf6f4,
    0x6247eb03a5585,
    0x633dd1d1929fd,
    0x6434634ccc320,
    0x652b9febc8fb7,
    0x6623882552225,
    0x671c1c70833f6,
    0x68155d44ca973,
    0x690f4b19e9538,
    0x6a09e667f3bcd,
    0x6b052fa75173e,
    0x6c012750bdabf,
    0x6cfdcddd47645,
    0x6dfb23c651a2f,
    0x6ef9298593ae5,
    0x6ff7df9519484,
    0x70f7466f42e87,
    0x71f75e8ec5f74,
    0x72f8286ead08a,
    0x73f9a48a58174,
    0x74fbd35d7cbfd,
    0x75feb564267c9,
    0x77024b1ab6e09,
    0x780694fde5d3f,
    0x790b938ac1cf6,
    0x7a11473eb0187,
    0x7b17b0976cfdb,
    0x7c1ed0130c132,
    0x7d26a62ff86f0,
    0x7e2f336cf4e62,
    0x7f3878491c491,
    0x80427543e1a12,
    0x814d2add106d9,
    0x82589994cce13,
    0x8364c1eb941f7,
    0x8471a4623c7ad,
    0x857f4179f5b21,
    0x868d99b4492ed,
    0x879cad931a436,
    0x88ac7d98a6699,
    0x89bd0a478580f,
    0x8ace5422aa0db,
    0x8be05bad61778,
    0x8cf3216b5448c,
    0x8e06a5e0866d9,
    0x8f1ae99157736,
    0x902fed0282c8a,
    0x9145b0b91ffc6,
    0x925c353aa2fe2,
    0x93737b0cdc5e5,
    0x948b82b5f98e5,
    0x95a44cbc8520f,
    0x96bdd9a7670b3,
    0x97d829fde4e50,
    0x98f33e47a22a2,
    0x9a0f170ca07ba,
    0x9b2bb4d53fe0d,
    0x9c49182a3f090,
    0x9d674194bb8d5,
    0x9e86319e32323,
    0x9fa5e8d07f29e,
    0xa0c667b5de565,
    0xa1e7aed8eb8bb,
    0xa309bec4a2d33,
    0xa42c980460ad8,
    0xa5503b23e255d,
    0xa674a8af46052,
    0xa799e1330b358,
    0xa8bfe53c12e59,
    0xa9e6b5579fdbf,
    0xab0e521356eba,
    0xac36bbfd3f37a,
    0xad5ff3a3c2774,
    0xae89f995ad3ad,
    0xafb4ce622f2ff,
    0xb0e07298db666,
    0xb20ce6c9a8952,
    0xb33a2b84f15fb,
    0xb468415b749b1,
    0xb59728de5593a,
    0xb6c6e29f1c52a,
    0xb7f76f2fb5e47,
    0xb928cf22749e4,
    0xba5b030a1064a,
    0xbb8e0b79a6f1f,
    0xbcc1e904bc1d2,
    0xbdf69c3f3a207,
    0xbf2c25bd71e09,
    0xc06286141b33d,
    0xc199bdd85529c,
    0xc2d1cd9fa652c,
    0xc40ab5fffd07a,
    0xc544778fafb22,
    0xc67f12e57d14b,
    0xc7ba88988c933,
    0xc8f6d9406e7b5,
    0xca3405751c4db,
    0xcb720dcef9069,
    0xccb0f2e6d1675,
    0xcdf0b555dc3fa,
    0xcf3155b5bab74,
    0xd072d4a07897c,
    0xd1b532b08c968,
    0xd2f87080d89f2,
    0xd43c8eacaa1d6,
    0xd5818dcfba487,
    0xd6c76e862e6d3,
    0xd80e316c98398,
    0xd955d71ff6075,
    0xda9e603db3285,
    0xdbe7cd63a8315,
    0xdd321f301b460,
    0xde7d5641c0658,
    0xdfc97337b9b5f,
    0xe11676b197d17,
    0xe264614f5a129,
    0xe3b333b16ee12,
    0xe502ee78b3ff6,
    0xe653924676d76,
    0xe7a51fbc74c83,
    0xe8f7977cdb740,
    0xea4afa2a490da,
    0xeb9f4867cca6e,
    0xecf482d8e67f1,
    0xee4aaa2188510,
    0xefa1bee615a27,
    0xf0f9c1cb6412a,
    0xf252b376bba97,
    0xf3ac948dd7274,
    0xf50765b6e4540,
    0xf6632798844f8,
    0xf7bfdad9cbe14,
    0xf91d802243c89,
    0xfa7c1819e90d8,
    0xfbdba3692d514,
    0xfd3c22b8f71f1,
    0xfe9d96b2a23d9,
];

/// For each value of a fraction's top 8 bits, the first bound at or above
/// the smallest fraction with those bits.
const FIRST_BOUND: [u16; 256] = {
    let mut first = [0u16; 256];
    let mut top = 0;
    while top < 256 {
        let lowest = (top as u64) << 44;
        let mut k = 0;
        while k < 256 && BOUNDS[k] < lowest {
            k += 1;
        }
        first[top] = k as u16;
        top += 1;
    }
    first
};

/// A duration of `nanos` nanoseconds in seconds, as the histogram's sum and
/// Prometheus see it (the nearest `f64`).
#[inline(always)]
fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// The index of the bucket of `schema` holding `value`, a positive normal
/// number: the `i` with `base^(i-1) < value <= base^i`.
///
/// As `frexp` does, `value = fraction * 2^exp` with the fraction in
/// `[0.5, 1)`; the bounds of the power of two `(2^(exp-1), 2^exp]` are
/// compared with the fraction exactly (the same exponent, so by their
/// fraction bits), and a value equal to a bound gets that bound's bucket.
#[inline]
pub(crate) fn index(value: f64, schema: i8) -> i32 {
    let bits = value.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1022;
    let fraction = bits & FRACTION_BITS;
    if schema > 0 {
        // The first of the 256 bounds at or above the fraction (256: none),
        // searched from the first at or above the fraction's top 8 bits:
        // at most two steps on.
        let mut at = usize::from(FIRST_BOUND[(fraction >> 44) as usize]);
        while at < BOUNDS.len() && BOUNDS[at] < fraction {
            at += 1;
        }
        let at_256 = at as i32;
        let shift = 8 - i32::from(schema);
        // ... and the first of this schema's bounds, every 2^shift-th.
        let within = (at_256 + (1 << shift) - 1) >> shift;
        within + ((exp - 1) << schema)
    } else {
        // A power of two is the upper bound of the bucket below it.
        let exp = if fraction == 0 { exp - 1 } else { exp };
        let shift = -i32::from(schema);
        (exp + (1 << shift) - 1) >> shift
    }
}

/// Where the positive buckets of one schema are kept: the indices a
/// duration of 1 ns up to `u64::MAX` ns can have, in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    schema: i8,
    /// The index of 1 ns: chunk 0 starts there.
    min: i32,
    /// Buckets per chunk: `1 << chunk_bits`, a whole power of two's worth
    /// from schema 6 up.
    chunk_bits: u32,
    chunks: usize,
}

impl Layout {
    /// The layout of `schema`, which must be in `MIN_SCHEMA..=MAX_SCHEMA`.
    pub(crate) fn new(schema: i8) -> Layout {
        debug_assert!((MIN_SCHEMA..=MAX_SCHEMA).contains(&schema));
        let min = index(seconds(1), schema);
        let max = index(seconds(u64::MAX), schema);
        let chunk_bits = 6u32.max(u32::from(schema.max(0) as u8));
        Layout {
            schema,
            min,
            chunk_bits,
            chunks: ((max - min) as usize >> chunk_bits) + 1,
        }
    }

    pub(crate) fn schema(&self) -> i8 {
        self.schema
    }

    fn chunk_len(&self) -> usize {
        1 << self.chunk_bits
    }
}

/// One shard's counts of one native histogram. Written as the shard's
/// other counts are (see `shards::add`); read by any thread.
#[derive(Debug)]
pub(crate) struct NativeBuckets {
    layout: Layout,
    /// Durations of 0 ns.
    zero: AtomicU64,
    /// Chunk `c` counts the buckets `layout.min + c * chunk_len ..`; null
    /// until a duration lands in it. Each points to `chunk_len` counters.
    chunks: Box<[AtomicPtr<AtomicU64>]>,
}

impl NativeBuckets {
    pub(crate) fn new(layout: Layout) -> NativeBuckets {
        NativeBuckets {
            layout,
            zero: AtomicU64::new(0),
            chunks: (0..layout.chunks)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        }
    }

    /// The counter a duration of `nanos` is counted in; its chunk is
    /// allocated the first time.
    #[inline]
    pub(crate) fn counter(&self, nanos: u64) -> &AtomicU64 {
        if nanos == 0 {
            return &self.zero;
        }
        let i = (index(seconds(nanos), self.layout.schema) - self.layout.min) as usize;
        let slot = &self.chunks[i >> self.layout.chunk_bits];
        let mut chunk = slot.load(Ordering::Acquire);
        if chunk.is_null() {
            chunk = self.allocate(slot);
        }
        // SAFETY: a non-null chunk pointer is a live allocation of
        // `chunk_len` counters, freed only when `self` is dropped, and the
        // offset is below `chunk_len`.
        unsafe { &*chunk.add(i & (self.layout.chunk_len() - 1)) }
    }

    /// Puts a zeroed chunk in `slot`, or finds the one another thread put
    /// there first (on the shared shard, threads race).
    #[cold]
    #[inline(never)]
    fn allocate(&self, slot: &AtomicPtr<AtomicU64>) -> *mut AtomicU64 {
        let chunk: Box<[AtomicU64]> = (0..self.layout.chunk_len())
            .map(|_| AtomicU64::new(0))
            .collect();
        let new = Box::into_raw(chunk).cast::<AtomicU64>();
        match slot.compare_exchange(
            std::ptr::null_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => new,
            Err(theirs) => {
                // SAFETY: `new` was made above from a box of `chunk_len`
                // counters and never shared.
                drop(unsafe { self.chunk_box(new) });
                theirs
            }
        }
    }

    /// # Safety
    /// `ptr` must come from [`allocate`](Self::allocate), and nothing else
    /// may use it afterwards.
    unsafe fn chunk_box(&self, ptr: *mut AtomicU64) -> Box<[AtomicU64]> {
        // SAFETY: as the caller promises, a box of `chunk_len` counters.
        unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                ptr,
                self.layout.chunk_len(),
            ))
        }
    }

    /// Adds this shard's counts to `totals` (of the same layout).
    pub(crate) fn add_to(&self, totals: &mut NativeTotals) {
        totals.zero = totals.zero.wrapping_add(self.zero.load(Ordering::Acquire));
        let len = self.layout.chunk_len();
        for (c, slot) in self.chunks.iter().enumerate() {
            let chunk = slot.load(Ordering::Acquire);
            if chunk.is_null() {
                continue;
            }
            // SAFETY: as in `counter`.
            let chunk = unsafe { std::slice::from_raw_parts(chunk, len) };
            let total = totals.chunks[c].get_or_insert_with(|| vec![0; len].into());
            for (t, n) in total.iter_mut().zip(chunk) {
                *t = t.wrapping_add(n.load(Ordering::Acquire));
            }
        }
    }
}

impl Drop for NativeBuckets {
    fn drop(&mut self) {
        for slot in self.chunks.iter() {
            let chunk = slot.load(Ordering::Acquire);
            if !chunk.is_null() {
                // SAFETY: made by `allocate`; the shard is going, nothing
                // reads it any more.
                drop(unsafe { self.chunk_box(chunk) });
            }
        }
    }
}

/// One native histogram summed over the shards, at one scrape.
#[derive(Debug)]
pub(crate) struct NativeTotals {
    layout: Layout,
    zero: u64,
    chunks: Vec<Option<Box<[u64]>>>,
}

impl NativeTotals {
    pub(crate) fn new(layout: Layout) -> NativeTotals {
        NativeTotals {
            layout,
            zero: 0,
            chunks: vec![None; layout.chunks],
        }
    }

    /// The histogram as exposed: at most [`MAX_BUCKETS`] buckets, the
    /// schema lowered as far as that takes.
    pub(crate) fn histogram(&self) -> NativeHistogram {
        let len = self.layout.chunk_len();
        let mut buckets: Vec<(i32, u64)> = Vec::new();
        for (c, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            let first = self.layout.min + (c * len) as i32;
            buckets.extend(
                chunk
                    .iter()
                    .enumerate()
                    .filter(|(_, &n)| n != 0)
                    .map(|(i, &n)| (first + i as i32, n)),
            );
        }
        NativeHistogram::from_buckets(self.layout.schema, self.zero, buckets)
    }
}

/// A native histogram's buckets as the exposition writes them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NativeHistogram {
    pub(crate) schema: i8,
    pub(crate) zero_threshold: f64,
    pub(crate) zero_count: u64,
    /// Runs of consecutive positive buckets: the first's offset is its
    /// first index, each later one's the gap after the run before.
    pub(crate) spans: Vec<(i32, u32)>,
    /// Each bucket's count minus the previous bucket's (the first's: its
    /// count), over the spans in order.
    pub(crate) deltas: Vec<i64>,
    /// Every observation counted: the zero bucket and the positive ones.
    pub(crate) count: u64,
}

impl NativeHistogram {
    /// From the non-empty buckets of `schema` in increasing index order,
    /// lowering the schema while there are more than [`MAX_BUCKETS`].
    pub(crate) fn from_buckets(
        mut schema: i8,
        zero_count: u64,
        mut buckets: Vec<(i32, u64)>,
    ) -> NativeHistogram {
        while buckets.len() > MAX_BUCKETS && schema > MIN_SCHEMA {
            buckets = reduce(&buckets);
            schema -= 1;
        }
        let count = buckets
            .iter()
            .fold(zero_count, |sum, (_, n)| sum.wrapping_add(*n));
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::with_capacity(buckets.len());
        let mut previous: Option<(i32, u64)> = None;
        for &(i, n) in &buckets {
            let mut last = 0u64;
            let mut length = 1;
            match previous {
                None => spans.push((i, 0)),
                Some((p, count)) => {
                    last = count;
                    let gap = i - p - 1;
                    // A gap of one or two buckets takes fewer bytes as
                    // empty buckets than as a new span.
                    if gap <= 2 {
                        for _ in 0..gap {
                            deltas.push(0i64.wrapping_sub(last as i64));
                            last = 0;
                        }
                        length += gap as u32;
                    } else {
                        spans.push((gap, 0));
                    }
                }
            }
            if let Some(span) = spans.last_mut() {
                span.1 += length;
            }
            deltas.push((n as i64).wrapping_sub(last as i64));
            previous = Some((i, n));
        }
        NativeHistogram {
            schema,
            zero_threshold: ZERO_THRESHOLD,
            zero_count,
            spans,
            deltas,
            count,
        }
    }

    /// Each bucket's index and count, in order (what the spans and deltas
    /// encode).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn buckets(&self) -> Vec<(i32, u64)> {
        let mut out = Vec::with_capacity(self.deltas.len());
        let mut deltas = self.deltas.iter();
        let (mut index, mut count) = (0i32, 0i64);
        for (s, &(offset, length)) in self.spans.iter().enumerate() {
            index = if s == 0 { offset } else { index + offset };
            for _ in 0..length {
                count += deltas.next().copied().unwrap_or(0);
                out.push((index, count as u64));
                index += 1;
            }
        }
        out
    }
}

/// The buckets one schema lower: bucket `i` goes to `ceil(i / 2)`, the
/// bucket of the lower schema whose range holds it, merging pairs.
fn reduce(buckets: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let mut merged: BTreeMap<i32, u64> = BTreeMap::new();
    for &(i, n) in buckets {
        let total = merged.entry((i + 1) >> 1).or_default();
        *total = total.wrapping_add(n);
    }
    merged.into_iter().collect()
}

#[cfg(all(test, not(loom)))]
mod tests;
