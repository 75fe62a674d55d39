use super::accept::media_ranges;
use super::*;

/// The `Accept` headers Prometheus 2.42 sends: by default, and with
/// `--enable-feature=native-histograms` (captured from a real scrape).
const PROMETHEUS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const PROMETHEUS_NATIVE: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const PROTO: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

fn negotiate(accept: &str) -> Format {
    Format::negotiate(
        std::iter::once(&HeaderValue::from_str(accept).unwrap()),
        true,
    )
}

#[test]
fn a_comma_in_a_quoted_parameter_does_not_split_a_range() {
    assert_eq!(
        media_ranges(r#"text/plain;p="a,b\",c";q=1, */*"#).collect::<Vec<_>>(),
        [r#"text/plain;p="a,b\",c";q=1"#, " */*"]
    );
    // Text, weighed 1 in a range with a quoted comma, wins over
    // OpenMetrics' 0.5 (with the range split, text would weigh nothing).
    assert_eq!(
        negotiate(r#"text/plain;x="a,b";q=1, application/openmetrics-text;q=0.5"#),
        Format::Text
    );
    assert_eq!(
        negotiate(r#"text/plain;x="a,b";q=0.2, application/openmetrics-text;q=0.5"#),
        Format::OpenMetrics
    );
}

#[test]
fn prometheus_gets_openmetrics_when_it_is_offered_and_text_otherwise() {
    let not_offered = Format::negotiate(
        std::iter::once(&HeaderValue::from_static(PROMETHEUS)),
        false,
    );
    assert_eq!(not_offered, Format::Text);
    assert_eq!(negotiate(PROMETHEUS), Format::OpenMetrics);
    #[cfg(feature = "protobuf")]
    assert_eq!(negotiate(PROMETHEUS_NATIVE), Format::Protobuf);
    // Without protobuf, OpenMetrics is what it ranks first of the rest.
    #[cfg(not(feature = "protobuf"))]
    assert_eq!(negotiate(PROMETHEUS_NATIVE), Format::OpenMetrics);
    for accept in [
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        r#"Application/OpenMetrics-Text;Version="1.0.0";q=0.9, text/plain;q=0.8"#,
        "application/*;q=0.9, text/*;q=0.2",
        "application/openmetrics-text;q=0.3, */*;q=0.1",
    ] {
        assert_eq!(negotiate(accept), Format::OpenMetrics, "Accept: {accept}");
    }
}

#[cfg(feature = "protobuf")]
#[test]
fn protobuf_goes_to_a_scraper_that_ranks_it_first() {
    assert_eq!(negotiate(PROTO), Format::Protobuf);
    assert_eq!(
        negotiate(&format!("{PROTO};q=0.3, */*;q=0.1")),
        Format::Protobuf
    );
    assert_eq!(
        negotiate(&format!(
            "{PROTO};q=0.5, application/openmetrics-text;q=0.4"
        )),
        Format::Protobuf
    );
    // The most specific range sets a format's weight: text/plain's 0.1,
    // not */*'s 1; but */* weighs OpenMetrics 1, above protobuf's 0.5.
    assert_eq!(
        negotiate(&format!("{PROTO};q=0.5, text/plain;q=0.1, */*")),
        Format::OpenMetrics
    );
    assert_eq!(
        negotiate(&format!(
            "{PROTO};q=0.5, text/plain;q=0.1, application/openmetrics-text;q=0"
        )),
        Format::Protobuf
    );
    // Level with OpenMetrics: OpenMetrics.
    assert_eq!(
        negotiate(&format!("{PROTO};q=0.5, application/*;q=0.5")),
        Format::OpenMetrics
    );
}

/// Several `Accept` header lines count as one list.
#[test]
fn every_accept_line_counts() {
    let lines = [
        HeaderValue::from_static("text/plain;q=0.2"),
        HeaderValue::from_static("application/openmetrics-text"),
    ];
    assert_eq!(Format::negotiate(lines.iter(), true), Format::OpenMetrics);
}

#[test]
fn anything_else_gets_text() {
    assert_eq!(Format::negotiate(std::iter::empty(), true), Format::Text);
    for accept in [
        "",
        "*/*",
        "text/plain",
        "garbage, ;;, =",
        "application/json",
        // Ranked below, or level with, text.
        "application/openmetrics-text;q=0.5, text/plain;q=0.5",
        "application/openmetrics-text;q=0.5, text/*;q=0.9",
        "application/openmetrics-text;q=0.2, */*;q=0.3",
        &format!("{PROTO};q=0.5, text/plain;q=0.5"),
        &format!("{PROTO};q=0.5, text/*;q=0.9"),
        &format!("{PROTO};q=0.2, */*;q=0.3"),
        // Refused, or with a `q` that is no weight.
        "application/openmetrics-text;q=0",
        "application/openmetrics-text;q=2, text/plain;q=0.1",
        "application/openmetrics-text;q=high, text/plain;q=0.1",
        &format!("{PROTO};q=0"),
        &format!("{PROTO};q=2, text/plain;q=0.1"),
        &format!("{PROTO};q=high, text/plain;q=0.1"),
        // Not a range: no subtype, a bad token, an unterminated quote.
        "application, text/plain;q=0.1",
        "application/open metrics, text/plain;q=0.1",
        "application/openmetrics-text;version=\"1.0.0, text/plain;q=0.1",
        // Another version of OpenMetrics.
        "application/openmetrics-text;version=0.0.1, text/plain;q=0.1",
        // Not the delimited MetricFamily stream.
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily",
        "application/vnd.google.protobuf;proto=other.Message;encoding=delimited",
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
    ] {
        assert_eq!(negotiate(accept), Format::Text, "Accept: {accept}");
    }
    // Without the `protobuf` feature the protobuf type is never chosen.
    #[cfg(not(feature = "protobuf"))]
    assert_eq!(
        negotiate(&format!("{PROTO}, text/plain;q=0.1")),
        Format::Text
    );
}
