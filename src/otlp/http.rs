//! OTLP/HTTP: `POST /v1/traces`.
//!
//! Bodies are `application/x-protobuf` or `application/json` (OTLP/JSON:
//! hex ids, integer enums, int64 as strings or numbers, unknown fields
//! ignored), optionally `Content-Encoding: gzip` or `deflate`. Answers are
//! in the request's content type: an `ExportTraceServiceResponse` (with
//! `partial_success` when spans were rejected) once the spans are durable,
//! or a `google.rpc.Status` with 400 (undecodable; clients do not retry),
//! 401, 413 (over `otlp.max_request_bytes`, sent or decompressed), 415, 429
//! or 503 (retry after `Retry-After` seconds).

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::rpc::{RpcStatus, code};
use super::{Intake, Refusal};

/// The router serving `/v1/traces`.
pub fn router(intake: Arc<Intake>) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .with_state(intake)
}

/// The body encodings OTLP/HTTP defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// An answer other than 200.
struct Failure {
    status: StatusCode,
    rpc: RpcStatus,
    format: Format,
    retry_after_secs: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, code: i32, message: impl Into<String>, format: Format) -> Failure {
        Failure {
            status,
            rpc: RpcStatus::new(code, message),
            format,
            retry_after_secs: None,
        }
    }

    fn refused(refusal: Refusal, format: Format, retry_after_secs: u64) -> Failure {
        let (status, code, message) = match refusal {
            Refusal::Busy => (
                StatusCode::TOO_MANY_REQUESTS,
                code::RESOURCE_EXHAUSTED,
                "too many requests at once (otlp.max_concurrent_requests); retry later".to_string(),
            ),
            Refusal::Unavailable(why) => (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, why),
            Refusal::Unauthenticated => {
                return Failure::new(
                    StatusCode::UNAUTHORIZED,
                    code::UNAUTHENTICATED,
                    "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                    format,
                );
            }
        };
        Failure {
            status,
            rpc: RpcStatus::retry_after(code, message, retry_after_secs),
            format,
            retry_after_secs: Some(retry_after_secs),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = match self.format {
            Format::Protobuf => self.rpc.encode_to_vec(),
            Format::Json => self.rpc.to_json(),
        };
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, self.format.content_type())],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

async fn export(State(intake): State<Arc<Intake>>, request: Request) -> Response {
    match handle(&intake, request).await {
        Ok(response) => response,
        Err(failure) => failure.into_response(),
    }
}

async fn handle(intake: &Intake, request: Request) -> Result<Response, Failure> {
    let headers = request.headers();
    let format = format_of(headers)?;
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if !intake.authorized(authorization) {
        return Err(Failure::refused(Refusal::Unauthenticated, format, 0));
    }
    let _permit = intake
        .permit()
        .map_err(|refusal| Failure::refused(refusal, format, intake.retry_after_secs))?;
    let encoding = encoding_of(headers, format)?;
    let limit = intake.max_request_bytes;
    let too_large = |what: &str| {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::RESOURCE_EXHAUSTED,
            format!("request {what} more than otlp.max_request_bytes = {limit} bytes"),
            format,
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large("body has"));
    }
    let body = read_body(request.into_body(), limit)
        .await
        .map_err(|err| match err {
            ReadError::TooLarge => too_large("body has"),
            ReadError::Io(err) => Failure::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_ARGUMENT,
                format!("reading the request body: {err}"),
                format,
            ),
        })?;
    let body = decompress(body, encoding, limit).map_err(|err| match err {
        ReadError::TooLarge => too_large("decompresses to"),
        ReadError::Io(err) => Failure::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_ARGUMENT,
            format!("Content-Encoding {encoding}: {err}"),
            format,
        ),
    })?;
    let decoded = match format {
        Format::Protobuf => ExportTraceServiceRequest::decode(body.as_slice())
            .map_err(|err| format!("not an ExportTraceServiceRequest in protobuf: {err}")),
        Format::Json => serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|err| format!("not an ExportTraceServiceRequest in OTLP/JSON: {err}")),
    };
    let export_request = decoded.map_err(|message| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_ARGUMENT,
            message,
            format,
        )
    })?;
    drop(body);
    let response = intake
        .export(export_request)
        .await
        .map_err(|refusal| Failure::refused(refusal, format, intake.retry_after_secs))?;
    let body = match format {
        Format::Protobuf => response.encode_to_vec(),
        Format::Json => serde_json::to_vec(&response).expect("a response serializes"),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response())
}

fn format_of(headers: &HeaderMap) -> Result<Format, Failure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        "application/json" => Ok(Format::Json),
        _ => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_ARGUMENT,
            format!(
                "Content-Type {content_type:?}: OTLP/HTTP takes application/x-protobuf or application/json"
            ),
            Format::Json,
        )),
    }
}

fn encoding_of(headers: &HeaderMap, format: Format) -> Result<&'static str, Failure> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok("identity"),
        "gzip" | "x-gzip" => Ok("gzip"),
        "deflate" => Ok("deflate"),
        other => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_ARGUMENT,
            format!("Content-Encoding {other:?}: the receiver takes gzip, deflate or none"),
            format,
        )),
    }
}

enum ReadError {
    TooLarge,
    Io(String),
}

/// The body, refusing it as soon as it passes `limit` bytes.
async fn read_body(body: Body, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| ReadError::Io(err.to_string()))?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Whether `body` starts with a zlib header (RFC 1950: method 8, and the
/// two bytes a multiple of 31).
fn is_zlib_header(body: &[u8]) -> bool {
    match body {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// Decompresses `body`, refusing it as soon as it passes `limit` bytes
/// (a small gzip bomb must not take the memory it expands to).
fn decompress(body: Vec<u8>, encoding: &str, limit: u64) -> Result<Vec<u8>, ReadError> {
    let reader: Box<dyn Read + '_> = match encoding {
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(body.as_slice())),
        // HTTP's "deflate" is zlib-wrapped; some clients send raw deflate.
        "deflate" if is_zlib_header(&body) => {
            Box::new(flate2::read::ZlibDecoder::new(body.as_slice()))
        }
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(body.as_slice())),
        _ => return Ok(body),
    };
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|err| ReadError::Io(err.to_string()))?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge);
    }
    Ok(out)
}
