//! Which exposition format a scrape gets: the `Accept` header's media
//! ranges weighed as HTTP asks (RFC 9110: the most specific range that
//! matches, its `q`), among the formats this build serves.

use hyper::header::HeaderValue;

/// An exposition format the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// The text format 0.0.4, which every scraper accepts.
    Text,
    /// The OpenMetrics text format 1.0.0.
    OpenMetrics,
    /// Length-delimited `io.prometheus.client.MetricFamily` messages.
    #[cfg(feature = "protobuf")]
    Protobuf,
}

impl Format {
    /// The format the `Accept` headers weigh highest, of those this build
    /// serves; text when they are missing or unreadable, or weigh no format
    /// above 0 (text is what every scraper reads). Each format takes the `q`
    /// of the most specific range that matches it, as HTTP asks: text from
    /// `text/plain`, then `text/*`, then `*/*`; OpenMetrics from
    /// `application/openmetrics-text` (version 1.0.0 or none), protobuf from
    /// the delimited `MetricFamily` protobuf type, each then from
    /// `application/*`, then `*/*`. A tie goes to text, then OpenMetrics.
    /// Ranges that do not parse, or whose `q` is not a number from 0 to 1,
    /// are ignored. OpenMetrics is offered only when `openmetrics` is set.
    pub(super) fn negotiate<'a>(
        accept: impl Iterator<Item = &'a HeaderValue>,
        openmetrics: bool,
    ) -> Format {
        #[derive(Default)]
        struct Weights {
            openmetrics: Option<f32>,
            #[cfg(feature = "protobuf")]
            protobuf: Option<f32>,
            application: Option<f32>,
            text_plain: Option<f32>,
            text: Option<f32>,
            any: Option<f32>,
        }
        let keep = |slot: &mut Option<f32>, q: f32| *slot = Some(slot.map_or(q, |w| w.max(q)));
        let mut w = Weights::default();
        for value in accept.filter_map(|v| v.to_str().ok()) {
            for range in media_ranges(value).filter_map(MediaRange::parse) {
                let q = range.q;
                let (ty, sub) = (range.ty, range.subtype);
                let is =
                    |a: &str, b: &str| ty.eq_ignore_ascii_case(a) && sub.eq_ignore_ascii_case(b);
                if is("application", "openmetrics-text")
                    && matches!(range.param("version"), None | Some("1.0.0"))
                {
                    keep(&mut w.openmetrics, q);
                } else if is("application", "vnd.google.protobuf") {
                    #[cfg(feature = "protobuf")]
                    if range.param("proto") == Some("io.prometheus.client.MetricFamily")
                        && range.param("encoding") == Some("delimited")
                    {
                        keep(&mut w.protobuf, q);
                    }
                } else if is("application", "*") {
                    keep(&mut w.application, q);
                } else if is("text", "plain") {
                    keep(&mut w.text_plain, q);
                } else if is("text", "*") {
                    keep(&mut w.text, q);
                } else if is("*", "*") {
                    keep(&mut w.any, q);
                }
            }
        }
        let application = |exact: Option<f32>| exact.or(w.application).or(w.any).unwrap_or(0.0);
        let mut best = (
            Format::Text,
            w.text_plain.or(w.text).or(w.any).unwrap_or(0.0),
        );
        let mut offer = |format, weight: f32| {
            if weight > best.1 {
                best = (format, weight);
            }
        };
        if openmetrics {
            offer(Format::OpenMetrics, application(w.openmetrics));
        }
        #[cfg(feature = "protobuf")]
        offer(Format::Protobuf, application(w.protobuf));
        best.0
    }
}

/// One media range of an `Accept` header: `type/subtype;name=value;q=0.5`.
struct MediaRange<'a> {
    ty: &'a str,
    subtype: &'a str,
    /// Its parameters but `q`, values unquoted.
    params: Vec<(&'a str, String)>,
    /// Its weight, 1 when not given.
    q: f32,
}

impl<'a> MediaRange<'a> {
    /// `None` for a range that is not `token/token` followed by `;name=value`
    /// parameters (tokens or quoted strings), or whose `q` is not a weight.
    fn parse(range: &'a str) -> Option<MediaRange<'a>> {
        let mut parts = split_outside_quotes(range, ';');
        let (ty, subtype) = parts.next()?.trim().split_once('/')?;
        if !is_token(ty) || !is_token(subtype) {
            return None;
        }
        let mut params = Vec::new();
        let mut q = 1.0;
        for param in parts {
            let (name, value) = param.trim().split_once('=')?;
            let (name, value) = (name.trim_end(), value.trim_start());
            if !is_token(name) {
                return None;
            }
            let value = unquote(value)?;
            if name.eq_ignore_ascii_case("q") {
                q = value
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))?;
            } else {
                params.push((name, value));
            }
        }
        Some(MediaRange {
            ty,
            subtype,
            params,
            q,
        })
    }

    /// The value of parameter `name` (case-insensitive), if given.
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP token: one or more of the characters RFC 9110 allows in one.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A parameter's value: a token, or a quoted string with its escapes undone.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return is_token(value).then(|| value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The comma-separated media ranges of an `Accept` value; a comma inside a
/// quoted parameter value (`;p="a,b"`) does not separate ranges.
pub(super) fn media_ranges(value: &str) -> impl Iterator<Item = &str> {
    split_outside_quotes(value, ',')
}

/// `value` split at each `separator` outside a quoted string.
fn split_outside_quotes(value: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    rest = Some(&s[i + c.len_utf8()..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}
