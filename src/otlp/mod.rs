//! The OTLP trace receiver: an intake beside the file watcher.
//!
//! Agents and OpenTelemetry Collectors export spans over OTLP/HTTP
//! (`POST /v1/traces`, protobuf or JSON, gzip or deflate) and OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`). Each
//! request is decoded (the `opentelemetry-proto` types), written as OTLP/JSON
//! lines to the append-only spool in `<data_dir>/otlp-spool/` and synced
//! (`spool.rs`); only then does the client get 200 or gRPC OK. The daemon's
//! ingestion reads the spool's files like any trace file, with the same
//! cursors, deduplication, rejects and quiet-period finalization, so spans
//! received are stored exactly as if they had been written to a file in the
//! watched folder. No engine knows the receiver exists.
//!
//! ```text
//!  HTTP  ─► auth, permit ─► decode ─┐
//!  gRPC  ─► auth, permit ─► decode ─┴─► encode lines ─► spool writer (group fsync) ─► 200 / OK
//!                                                             │
//!            daemon ingestion (traces dir + spool dir) ◄──────┘ (appended: "look again")
//! ```
//!
//! Backpressure, never unbounded memory: at most `max_concurrent_requests`
//! requests are handled at once (more get 429 / `RESOURCE_EXHAUSTED`), each
//! at most `max_request_bytes` before and after decompression (413), and
//! when the spool holds more than `max_spool_bytes` not yet ingested the
//! answer is 503 / `UNAVAILABLE`, each with a retry delay.

mod config;
mod encode;
mod grpc;
mod http;
mod rpc;
mod spool;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::{Semaphore, watch};

pub use config::OtlpConfig;
pub use spool::{remove_ingested, spool_dir};

use config::listen_addr;
use spool::{AppendError, Spool};

/// How long shutdown waits for requests in flight to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What both protocols share: the spool, the request permits and the
/// limits.
struct Intake {
    spool: Spool,
    permits: Arc<Semaphore>,
    /// Bearer token requests must carry, when one is configured.
    token: Option<String>,
    max_request_bytes: u64,
    retry_after_secs: u64,
}

/// Why a request was not taken.
#[derive(Debug)]
enum Refusal {
    /// Too many requests at once (429, `RESOURCE_EXHAUSTED`): retry.
    Busy,
    /// The spool is full or cannot be written (503, `UNAVAILABLE`): retry.
    Unavailable(String),
    /// No or a wrong bearer token (401, `UNAUTHENTICATED`).
    Unauthenticated,
}

impl Intake {
    /// Makes the spans of `request` durable; the response says which were
    /// rejected, and why.
    async fn export(
        &self,
        request: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, Refusal> {
        let encoded = tokio::task::spawn_blocking(move || encode::encode(&request))
            .await
            .map_err(|err| Refusal::Unavailable(format!("encoding failed: {err}")))?
            .map_err(|err| Refusal::Unavailable(format!("encoding failed: {err}")))?;
        if !encoded.lines.is_empty() {
            self.spool
                .append(encoded.lines)
                .await
                .map_err(|err: AppendError| Refusal::Unavailable(err.to_string()))?;
        }
        Ok(ExportTraceServiceResponse {
            partial_success: (encoded.rejected_spans > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: encoded.rejected_spans as i64,
                error_message: encoded.error_message,
            }),
        })
    }

    /// Whether an `authorization` header value carries the token.
    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        authorization
            .and_then(|value| value.strip_prefix(b"Bearer "))
            .is_some_and(|given| given == token.as_bytes())
    }

    /// A permit to handle one request, if fewer than the limit are running.
    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)
    }
}

/// The running receiver: its listeners and the spool writer.
pub struct Receiver {
    /// Where OTLP/HTTP listens, when on.
    pub http_addr: Option<SocketAddr>,
    /// Where OTLP/gRPC listens, when on.
    pub grpc_addr: Option<SocketAddr>,
    intake: Arc<Intake>,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

/// The environment variable holding the bearer token, and its value.
pub struct Token<'a> {
    /// Its name, for the message refusing a non-loopback address without it.
    pub env: &'a str,
    pub value: Option<String>,
}

impl Receiver {
    /// Binds the listeners `config` turns on and starts serving; `None` when
    /// both are off. `appended` is called after spans were made durable.
    /// Refuses a non-loopback address without a token.
    pub async fn start(
        config: &OtlpConfig,
        data_dir: &Path,
        token: Token<'_>,
        appended: Box<dyn Fn() + Send>,
    ) -> anyhow::Result<Option<Receiver>> {
        let http = listen_addr(&config.http_listen)
            .transpose()
            .with_context(|| format!("otlp.http_listen = {:?}", config.http_listen))?;
        let grpc = listen_addr(&config.grpc_listen)
            .transpose()
            .with_context(|| format!("otlp.grpc_listen = {:?}", config.grpc_listen))?;
        if http.is_none() && grpc.is_none() {
            return Ok(None);
        }
        for (key, addr) in [("http_listen", http), ("grpc_listen", grpc)] {
            if let Some(addr) = addr.filter(|addr| !addr.ip().is_loopback())
                && token.value.is_none()
            {
                anyhow::bail!(
                    "otlp.{key} = {addr} is not a loopback address: set a token in the environment \
                     variable {} (api.token_env) to listen there",
                    token.env
                );
            }
        }
        let dir = spool_dir(data_dir);
        let spool = Spool::open(
            &dir,
            config.max_spool_bytes,
            config.max_concurrent_requests,
            appended,
        )
        .with_context(|| format!("opening the OTLP spool {}", dir.display()))?;
        let intake = Arc::new(Intake {
            spool,
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            token: token.value,
            max_request_bytes: config.max_request_bytes,
            retry_after_secs: config.retry_after_secs,
        });
        let (stop, stopped) = watch::channel(false);
        let mut receiver = Receiver {
            http_addr: None,
            grpc_addr: None,
            intake: Arc::clone(&intake),
            stop,
            servers: Vec::new(),
        };
        if let Some(addr) = http {
            let router = http::router(Arc::clone(&intake));
            let (bound, task) = serve(addr, "otlp.http_listen", router, stopped.clone()).await?;
            tracing::info!(addr = %bound, "OTLP/HTTP receiver listening");
            receiver.http_addr = Some(bound);
            receiver.servers.push(task);
        }
        if let Some(addr) = grpc {
            let router = grpc::router(Arc::clone(&intake));
            let (bound, task) = serve(addr, "otlp.grpc_listen", router, stopped).await?;
            tracing::info!(addr = %bound, "OTLP/gRPC receiver listening");
            receiver.grpc_addr = Some(bound);
            receiver.servers.push(task);
        }
        Ok(Some(receiver))
    }

    /// Stops accepting, lets requests in flight finish (their spans are
    /// then durable), and stops the spool writer.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        for task in self.servers {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("OTLP requests still running after the drain timeout; cut off");
                abort.abort();
            }
        }
        match Arc::try_unwrap(self.intake) {
            Ok(intake) => {
                let _ = tokio::task::spawn_blocking(move || intake.spool.close()).await;
            }
            Err(_) => tracing::warn!("OTLP requests still hold the spool at shutdown"),
        }
        tracing::info!("OTLP receiver stopped");
    }
}

/// Binds `addr` and serves `router` (HTTP/1.1 and HTTP/2) until `stop`.
async fn serve(
    addr: SocketAddr,
    key: &str,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} ({key})"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %err, %bound, "OTLP receiver stopped");
        }
    });
    Ok((bound, task))
}
