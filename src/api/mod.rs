//! The daemon's local HTTP API (axum).
//!
//! - `GET /healthz`: `ok` while the daemon runs.
//! - `GET /v1/status`: ingestion counters and rejects, rounds running and
//!   their progress, budget spent, policy version, configuration problems.
//! - `GET /metrics`: the same counters in Prometheus text format.
//! - `GET /v1/rounds`, `GET /v1/rounds/{id}`: rounds as stored.
//! - `POST /v1/policy/act`: the promoted policy's tool probabilities for a
//!   state, plus a sampled tool, its probability and a decision id for the
//!   agent to log on the decision's span (clean propensities for PPO). The
//!   policy is cached and swapped when the daemon promotes a new version;
//!   until a trained policy has passed the promotion gate the answer is 503
//!   (the agent keeps its own policy).
//! - `GET /v1/prompts/{name}/resolve?key=K`: the prompt version (id and
//!   text) request key K gets: sticky A/B assignment while a test runs, the
//!   production version otherwise.
//!
//! It listens on loopback by default. Any other address needs a bearer
//! token, read from the environment variable `api.token_env` names; when
//! that variable is set, loopback requires it too. Errors are JSON
//! `{"error": "..."}` with a fitting status.

mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::{ApiConfig, Config};
use crate::owner::Owner;
use crate::registry::{PromptRegistry, RegistryError, Resolved};
use crate::rl::{ActRequest, ServedPolicy};
use crate::rng::Rng;
use crate::store::{Round, Store, StoreError};

pub use status::{IngestStatus, RunningRound, Status};

/// What the handlers share.
pub struct ApiState {
    /// The daemon's status, as it last published it.
    status: watch::Receiver<Status>,
    /// The API's own store and registry connections, on a thread of their
    /// own so no handler runs SQLite on a runtime worker.
    db: Owner<ApiDb>,
    checkpoint_dir: Mutex<PathBuf>,
    /// The served policy, loaded once per promoted version (the status's
    /// `policy_version`, which the daemon moves on promotion).
    policy: Mutex<Option<Arc<ServedPolicy>>>,
    /// Bearer token requests must carry, when one is configured.
    token: Option<String>,
    rng: Mutex<Rng>,
}

/// The API's store connection (listing rounds) and registry (resolving).
struct ApiDb {
    store: Store,
    registry: PromptRegistry,
}

impl ApiState {
    /// State for `config`, reading the daemon's `status`; the token comes
    /// from the environment variable `api.token_env` names.
    pub fn new(config: &Config, status: watch::Receiver<Status>) -> anyhow::Result<ApiState> {
        let token = std::env::var(&config.api.token_env)
            .ok()
            .filter(|token| !token.is_empty());
        ApiState::with_token(config, status, token)
    }

    /// State for `config` with an explicit `token` (or none).
    pub fn with_token(
        config: &Config,
        status: watch::Receiver<Status>,
        token: Option<String>,
    ) -> anyhow::Result<ApiState> {
        let seed = crate::store::now_unix_ms() as u64 ^ u64::from(std::process::id());
        let db = ApiDb {
            store: Store::open(&config.data_dir)?,
            registry: PromptRegistry::open(&config.data_dir, config.registry.clone(), "api")?,
        };
        Ok(ApiState {
            status,
            db: Owner::spawn("api-store", db)?,
            checkpoint_dir: Mutex::new(config.data_dir.join("rl")),
            policy: Mutex::new(None),
            token,
            rng: Mutex::new(Rng::new(seed)),
        })
    }

    /// A copy of the current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Takes the reloadable parts of a new configuration.
    pub async fn set_config(&self, config: &Config) {
        *lock(&self.checkpoint_dir) = config.data_dir.join("rl");
        *lock(&self.policy) = None;
        let registry = config.registry.clone();
        // Only fails when the thread is gone, and then nothing resolves.
        let _ = self
            .db
            .call(move |db| db.registry.set_config(registry))
            .await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Binds `config.listen` and serves [`app`] until the task is aborted.
/// Refuses a non-loopback address without a token.
pub async fn serve(
    config: &ApiConfig,
    state: Arc<ApiState>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("api.listen = {:?}", config.listen))?;
    if !addr.ip().is_loopback() && state.token.is_none() {
        anyhow::bail!(
            "api.listen = {addr} is not a loopback address: set a token in the environment \
             variable {} (api.token_env) to listen there",
            config.token_env
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (api.listen)"))?;
    tracing::info!(%addr, "HTTP API listening");
    let app = app(state, config.max_body_bytes);
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "HTTP API stopped");
        }
    }))
}

/// The router, without a listener (tests drive it with `oneshot`).
pub fn app(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/rounds", get(rounds))
        .route("/v1/rounds/{id}", get(round))
        .route("/v1/policy/act", post(policy_act))
        .route("/v1/prompts/{name}/resolve", get(resolve))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// An error answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    fn internal(err: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

/// A busy store is 503 with `Retry-After` (the agent asks again), anything
/// else from the store 500.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        if err.is_busy() {
            ApiError::busy(err)
        } else {
            ApiError::internal(err)
        }
    }
}

/// Unknown prompt or version is 404, a busy store 503, the rest 500.
impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> ApiError {
        match err {
            err if err.is_not_found() => ApiError::new(StatusCode::NOT_FOUND, err.to_string()),
            RegistryError::Store(err) => ApiError::from(err),
            err => ApiError::internal(err),
        }
    }
}

impl ApiError {
    /// 503: the store is busy; `Retry-After` says when to ask again.
    fn busy(err: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("the store is busy, retry shortly: {err}"),
            retry_after_secs: Some(RETRY_AFTER_SECS),
        }
    }
}

/// What `Retry-After` says when the store is busy.
const RETRY_AFTER_SECS: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.message}))).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

async fn require_token(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let sent = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if sent.is_some_and(|sent| constant_time_eq(sent.as_bytes(), token.as_bytes())) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(state): State<Arc<ApiState>>) -> Json<Status> {
    Json(state.status())
}

async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.status().metrics(),
    )
}

#[derive(Debug, Deserialize)]
struct RoundsQuery {
    limit: Option<u64>,
}

async fn rounds(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<RoundsQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let limit = query.limit.unwrap_or(50).min(1000);
    let rounds = state
        .db
        .call(move |db| db.store.rounds(limit))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(rounds.iter().map(round_json).collect()))
}

async fn round(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let round = state
        .db
        .call(move |db| db.store.round(id))
        .await
        .map_err(ApiError::internal)??;
    match round {
        Some(round) => Ok(Json(round_json(&round))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no round {id}"),
        )),
    }
}

fn round_json(round: &Round) -> Value {
    let summary = round
        .summary
        .as_deref()
        .and_then(|text| serde_json::from_str::<Value>(text).ok());
    json!({
        "id": round.id,
        "kind": round.kind,
        "subject": round.subject,
        "status": round.status.as_str(),
        "trigger": round.trigger,
        "upto_episode_id": round.upto_episode_id,
        "output_dir": round.output_dir,
        "attempts": round.attempts,
        "started_at_unix_ms": round.started_at_unix_ms,
        "finished_at_unix_ms": round.finished_at_unix_ms,
        "error": round.error,
        "summary": summary,
    })
}

#[derive(Debug, Deserialize)]
struct ResolveQuery {
    key: String,
}

async fn resolve(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    query: Result<Query<ResolveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Resolved>, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::new(err.status(), err.body_text()))?;
    state
        .db
        .call(move |db| db.registry.resolve(&name, &query.key))
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .map_err(ApiError::from)
}

/// The state of a decision, as the agent sees it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActBody {
    input: String,
    #[serde(default)]
    previous_tool: Option<String>,
    #[serde(default)]
    previous_tool_error: bool,
    /// Decisions made so far in this episode (0 for the first).
    #[serde(default)]
    step: usize,
    /// Tools available now; empty or absent: every tool the policy knows.
    #[serde(default)]
    tools: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ActResponse {
    /// Every available action (tools and `answer` without one), most likely
    /// first.
    probabilities: Vec<ActionProbability>,
    /// The sampled action, its probability (log it as the decision's
    /// `whetstone.policy.probability`), an id for the decision (log it as
    /// `whetstone.policy.decision_id`) and the policy version (log it as
    /// `whetstone.policy.version`).
    sampled: String,
    probability: f64,
    decision_id: String,
    policy_version: u64,
}

#[derive(Debug, Serialize)]
struct ActionProbability {
    action: String,
    probability: f64,
}

/// The policy to serve: the cached one while it is the promoted version,
/// else loaded (once) from the checkpoint. Nothing before a trained policy
/// passed the gate.
async fn served_policy(state: &Arc<ApiState>) -> Result<Arc<ServedPolicy>, ApiError> {
    let unavailable = |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message);
    let version = state.status().policy_version.unwrap_or(0);
    if version == 0 {
        return Err(unavailable(
            "no trained policy has passed the promotion gate yet: keep the agent's own policy"
                .into(),
        ));
    }
    if let Some(policy) = lock(&state.policy)
        .as_ref()
        .filter(|policy| policy.version() == version)
    {
        return Ok(Arc::clone(policy));
    }
    let checkpoint_dir = lock(&state.checkpoint_dir).clone();
    let policy = tokio::task::spawn_blocking(move || ServedPolicy::load(&checkpoint_dir))
        .await
        .map_err(ApiError::internal)?
        .map_err(|err| unavailable(format!("no policy to act with: {err:#}")))?;
    let policy = Arc::new(policy);
    *lock(&state.policy) = Some(Arc::clone(&policy));
    Ok(policy)
}

async fn policy_act(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<ActBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ActResponse>, ApiError> {
    let Json(body) = body.map_err(|err| ApiError::new(err.status(), err.body_text()))?;
    let request = ActRequest {
        input: body.input,
        previous_tool: body.previous_tool,
        previous_tool_error: body.previous_tool_error,
        step_index: body.step,
        tools: body.tools,
    };
    let policy = served_policy(&state).await?;
    let (draw, id_bits) = {
        let mut rng = lock(&state.rng);
        (rng.next_f64(), rng.next_u64())
    };
    let decision = tokio::task::spawn_blocking(move || policy.decide(request, draw, id_bits))
        .await
        .map_err(ApiError::internal)?
        .map_err(|err| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no policy to act with: {err:#}"),
            )
        })?;
    Ok(Json(ActResponse {
        probabilities: decision
            .probabilities
            .into_iter()
            .map(|(action, probability)| ActionProbability {
                action,
                probability,
            })
            .collect(),
        sampled: decision.sampled,
        probability: decision.probability,
        decision_id: decision.decision_id,
        policy_version: decision.policy_version,
    }))
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use tower::ServiceExt;

    use super::*;

    fn state(dir: &std::path::Path, token: Option<&str>) -> Arc<ApiState> {
        let config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        let (_, status) = watch::channel(Status {
            config_source: "test".into(),
            ..Status::default()
        });
        Arc::new(ApiState::with_token(&config, status, token.map(str::to_string)).unwrap())
    }

    async fn call(app: Router, request: axum::http::Request<Body>) -> (StatusCode, String) {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(uri: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn endpoints_answer_and_errors_are_json() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(state(dir.path(), None), 2048);
        assert_eq!(
            call(app.clone(), get("/healthz")).await,
            (StatusCode::OK, "ok".into())
        );
        let (code, body) = call(app.clone(), get("/v1/status")).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["config_source"],
            "test"
        );
        let (code, body) = call(app.clone(), get("/metrics")).await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            body.contains("# TYPE whetstone_ingest_episodes_total counter"),
            "{body}"
        );
        assert_eq!(
            call(app.clone(), get("/v1/rounds")).await,
            (StatusCode::OK, "[]".into())
        );
        let (code, body) = call(app.clone(), get("/v1/rounds/7")).await;
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::NOT_FOUND, r#"{"error":"no round 7"}"#)
        );
        let (code, body) = call(app.clone(), get("/nope")).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(body.starts_with(r#"{"error":"#), "{body}");

        let act = |body: String| {
            axum::http::Request::post("/v1/policy/act")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap()
        };
        let (code, body) = call(app.clone(), act(r#"{"inptu": "x"}"#.into())).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains("inptu"), "{body}");
        let (code, body) = call(app.clone(), act(r#"{"input": "x"}"#.into())).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("passed the promotion gate"), "{body}");
        let huge = format!(r#"{{"input": "{}"}}"#, "x".repeat(4096));
        let (code, _) = call(app, act(huge)).await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn resolve_gives_the_version_and_text_for_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = PromptRegistry::open(dir.path(), Default::default(), "test").unwrap();
        for text in ["v1 text", "v2 text"] {
            registry
                .register_prompt(None, "Controller", text, Default::default())
                .unwrap();
        }
        let app = app(state(dir.path(), None), 2048);
        let (code, body) = call(app.clone(), get("/v1/prompts/Controller/resolve?key=u1")).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let resolved: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (resolved["version"].as_str(), resolved["text"].as_str()),
            (Some("1"), Some("v1 text"))
        );
        registry.start_ab_test("Controller", "1", "2", 1.0).unwrap();
        let (_, body) = call(app.clone(), get("/v1/prompts/Controller/resolve?key=u1")).await;
        let resolved: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (resolved["version"].as_str(), resolved["arm"].as_str()),
            (Some("2"), Some("treatment"))
        );
        let (code, _) = call(app.clone(), get("/v1/prompts/Nope/resolve?key=u1")).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, body) = call(app, get("/v1/prompts/Controller/resolve")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    }

    /// Issue 18: every resolve failure used to be a 404, a busy database
    /// included; the agent then treated a transient failure as a missing
    /// prompt.
    #[tokio::test]
    async fn a_busy_store_is_503_with_retry_after_and_a_missing_prompt_404() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        let response =
            ApiError::from(RegistryError::Store(StoreError::Sqlite(busy))).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::from(RegistryError::UnknownPrompt("P".into())).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let other = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        );
        let response = ApiError::from(StoreError::Sqlite(other)).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn a_configured_token_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(state(dir.path(), Some("s3cret")), 2048);
        let (code, body) = call(app.clone(), get("/v1/status")).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(body.contains("bearer token"), "{body}");
        let wrong = axum::http::Request::get("/v1/status")
            .header(header::AUTHORIZATION, "Bearer nope")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(app.clone(), wrong).await.0, StatusCode::UNAUTHORIZED);
        let right = axum::http::Request::get("/v1/status")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(app, right).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_non_loopback_address_without_a_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = ApiConfig {
            listen: "0.0.0.0:0".into(),
            ..ApiConfig::default()
        };
        let err = serve(&config, state(dir.path(), None)).await.unwrap_err();
        assert!(err.to_string().contains("WHETSTONE_API_TOKEN"), "{err}");
        let with_token = serve(&config, state(dir.path(), Some("t"))).await.unwrap();
        with_token.abort();
    }
}
