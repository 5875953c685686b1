//! The two `google.rpc` messages OTLP answers carry: `Status` (the body of
//! an OTLP/HTTP error, the details of a gRPC error) and `RetryInfo` (how
//! long a client should wait). Declared here rather than pulling in a crate
//! of Google's protos for two small messages.

use prost::Message;

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<Duration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `google.rpc.Code` values the receiver answers with.
pub mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAUTHENTICATED: i32 = 16;
    pub const UNAVAILABLE: i32 = 14;
}

impl RpcStatus {
    /// A status with no details.
    pub fn new(code: i32, message: impl Into<String>) -> RpcStatus {
        RpcStatus {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// A status asking the client to retry after `secs` seconds.
    pub fn retry_after(code: i32, message: impl Into<String>, secs: u64) -> RpcStatus {
        let info = RetryInfo {
            retry_delay: Some(Duration {
                seconds: secs as i64,
                nanos: 0,
            }),
        };
        RpcStatus {
            code,
            message: message.into(),
            details: vec![Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: info.encode_to_vec(),
            }],
        }
    }

    /// The OTLP/JSON form (`details` left out: JSON clients read only the
    /// message, and the delay is in the `Retry-After` header).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::json!({"code": self.code, "message": self.message})
            .to_string()
            .into_bytes()
    }
}
