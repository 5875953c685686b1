//! `[otlp]`: where the OTLP receiver listens and the limits that keep a
//! flood of exporters from taking the daemon's memory or disk.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::Checker;

const MIB: u64 = 1024 * 1024;

/// The OTLP/HTTP and OTLP/gRPC trace receivers of `whetstone daemon`.
/// Defaults are documented in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// OTLP/HTTP listener (`POST /v1/traces`, protobuf or JSON); empty
    /// turns it off.
    pub http_listen: String,
    /// OTLP/gRPC listener (`TraceService/Export`); empty turns it off.
    pub grpc_listen: String,
    /// Largest accepted request, in bytes, both as sent and once
    /// decompressed; larger ones get 413 (gRPC: `RESOURCE_EXHAUSTED`).
    pub max_request_bytes: u64,
    /// Requests handled at once over both protocols; more get 429 (gRPC:
    /// `RESOURCE_EXHAUSTED`) with a retry delay.
    pub max_concurrent_requests: usize,
    /// Bytes of received spans waiting in the spool for ingestion; above
    /// this the receiver answers 503 (gRPC: `UNAVAILABLE`) until ingestion
    /// catches up.
    pub max_spool_bytes: u64,
    /// The delay, in seconds, that 429 and 503 answers ask clients to wait
    /// before retrying (`Retry-After`, gRPC `RetryInfo`).
    pub retry_after_secs: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            http_listen: "127.0.0.1:4318".into(),
            grpc_listen: "127.0.0.1:4317".into(),
            max_request_bytes: 16 * MIB,
            max_concurrent_requests: 32,
            max_spool_bytes: 1024 * MIB,
            retry_after_secs: 1,
        }
    }
}

impl OtlpConfig {
    pub(crate) fn validate(&self, check: &mut Checker) {
        for (key, listen) in [
            ("http_listen", &self.http_listen),
            ("grpc_listen", &self.grpc_listen),
        ] {
            if let Some(Err(err)) = listen_addr(listen) {
                check.fail(
                    key,
                    format!(
                        "must be an IP address and port like 127.0.0.1:4318, or \"\" to turn it off ({err})"
                    ),
                );
            }
        }
        if !self.http_listen.is_empty() && self.http_listen == self.grpc_listen {
            check.fail("grpc_listen", "must differ from otlp.http_listen");
        }
        check.in_range(
            "max_request_bytes",
            self.max_request_bytes,
            1024..=256 * MIB,
        );
        check.in_range(
            "max_concurrent_requests",
            self.max_concurrent_requests,
            1..=4096,
        );
        check.in_range(
            "max_spool_bytes",
            self.max_spool_bytes,
            MIB..=1024 * 1024 * MIB,
        );
        check.in_range("retry_after_secs", self.retry_after_secs, 1..=60);
    }
}

/// The address a `*_listen` value names; `None` when it is empty (off).
pub fn listen_addr(listen: &str) -> Option<Result<SocketAddr, std::net::AddrParseError>> {
    (!listen.is_empty()).then(|| listen.parse())
}
