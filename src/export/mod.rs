//! Serving what the registry holds, the way Prometheus users expect: the text
//! exposition encoder, the `/metrics` server, and pushes to a Pushgateway.
//! These read the registry only; nothing here records.

#[cfg(feature = "http")]
mod http;
mod openmetrics;
#[cfg(feature = "protobuf")]
mod protobuf;
#[cfg(feature = "push")]
mod push;
pub(crate) mod text;

#[cfg(feature = "http")]
pub use http::{MetricsServer, MetricsServerBuilder};
pub use openmetrics::OpenMetricsEncoder;
#[cfg(feature = "push")]
pub use push::{
    PushError, PushGateway, PushGatewayBuilder, DEFAULT_PUSH_TIMEOUT, PUSH_FAILURES_METRIC,
};
pub use text::TextEncoder;
