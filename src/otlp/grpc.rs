//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`
//! over tonic, served by the same HTTP/2-capable server as OTLP/HTTP.
//!
//! Same semantics as `http.rs`: OK once the spans are durable (with
//! `partial_success` for rejected spans); `UNAUTHENTICATED` without the
//! token; `RESOURCE_EXHAUSTED` over the request limits or the concurrency
//! limit, and `UNAVAILABLE` while the spool is full, both with a
//! `google.rpc.RetryInfo`, which OTLP clients need to retry
//! `RESOURCE_EXHAUSTED` at all. Requests may be gzip or deflate compressed.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};

use super::rpc::{RpcStatus, code};
use super::{Intake, Refusal};

/// The router serving the trace service.
pub fn router(intake: Arc<Intake>) -> Router {
    let service = TraceServiceServer::new(Service(Arc::clone(&intake)))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .max_decoding_message_size(intake.max_request_bytes as usize);
    tonic::service::Routes::new(service)
        .into_axum_router()
        .layer(middleware::from_fn_with_state(intake, admit))
}

/// Checks the token and takes a permit before the request body is read, so
/// the permits bound the memory requests take.
async fn admit(State(intake): State<Arc<Intake>>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !intake.authorized(authorization) {
        return status_of(Refusal::Unauthenticated, intake.retry_after_secs).into_http();
    }
    let _permit = match intake.permit() {
        Ok(permit) => permit,
        Err(refusal) => return status_of(refusal, intake.retry_after_secs).into_http(),
    };
    next.run(request).await
}

fn status_of(refusal: Refusal, retry_after_secs: u64) -> Status {
    let (code, rpc_code, message) = match refusal {
        Refusal::Unauthenticated => {
            return Status::unauthenticated(
                "missing or wrong bearer token (authorization: Bearer TOKEN)",
            );
        }
        Refusal::Busy => (
            Code::ResourceExhausted,
            code::RESOURCE_EXHAUSTED,
            "too many requests at once (otlp.max_concurrent_requests); retry later".to_string(),
        ),
        Refusal::Unavailable(why) => (Code::Unavailable, code::UNAVAILABLE, why),
    };
    let details = RpcStatus::retry_after(rpc_code, message.clone(), retry_after_secs);
    Status::with_details(code, message, details.encode_to_vec().into())
}

struct Service(Arc<Intake>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        self.0
            .export(request.into_inner())
            .await
            .map(tonic::Response::new)
            .map_err(|refusal| status_of(refusal, self.0.retry_after_secs))
    }
}
