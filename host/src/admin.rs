//! The admin endpoint (HTTP on 127.0.0.1 by default) and its client, used by
//! `ferrule plugin swap|rollback|release` and `ferrule status`.
//! Read-only: `GET /` (the status page), `GET /status`, `GET /dead-letters` (the latest), `GET /metrics` (Prometheus),
//! `GET /writes` (the latest write-back commands and their outcomes), `GET /health` (live), `GET /ready` (503 with the reasons: a sink stalled, retrying or not
//! connected, a buffer full or unable to write, a stage quarantined, the tag table full).
//! `GET /stages` (stages with plugin version, digest, state, limits, candidate, shadow, call
//! costs), `GET /stages/{stage}/shadow` (the shadow run's report).
//! Mutating, each needing `Authorization: Bearer <admin.token>` (401 otherwise):
//! `POST /stages/{stage}/load` (`{"plugin": "<path>", "config": {..}}`: check and keep as the
//! candidate), `POST /stages/{stage}/swap` (`{"plugin": "<path>"}`; `{"config": {..}}` alone
//! re-initialises the running version with a new config; `{}` installs the candidate),
//! `POST /stages/{stage}/rollback`, `POST /stages/{stage}/quarantine` (`{"reason": ".."}`),
//! `POST /stages/{stage}/release`, `POST /stages/{stage}/shadow` (`{"plugin": "<path>"}`, or
//! `{}` for the candidate), `POST /stages/{stage}/shadow/promote`,
//! `POST /stages/{stage}/shadow/abandon`. Every refused mutating call (wrong token, refused
//! plugin or config, bad body) is logged by the host with its reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::pipeline::{InstallReport, LoadedVersion, PipelineError, ShadowReport, StageStatus};
use crate::runtime::PipelineHandle;

/// Body of `swap`, `load` and `shadow`.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SwapRequest {
    /// Component (or package) path on the host; absent: the stage's loaded candidate
    /// (`load` requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PathBuf>,
    /// New plugin config (JSON object); absent keeps the running config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// Body of `quarantine`.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Result of a swap or rollback.
#[derive(Deserialize, Serialize, Debug)]
pub struct SwapResponse {
    pub stage: String,
    pub from: String,
    pub to: String,
    pub stall_us: u64,
    pub retagged: usize,
}

impl From<InstallReport> for SwapResponse {
    fn from(r: InstallReport) -> Self {
        SwapResponse {
            stage: r.stage,
            from: r.from,
            to: r.to,
            stall_us: r.stall.as_micros() as u64,
            retagged: r.retagged,
        }
    }
}

#[derive(Deserialize, Serialize, Debug)]
pub struct ErrorBody {
    pub error: String,
}

type ApiError = (StatusCode, Json<ErrorBody>);

fn api_error(e: PipelineError) -> ApiError {
    let code = match e {
        PipelineError::NoStage(_) => StatusCode::NOT_FOUND,
        PipelineError::Conflict { .. } => StatusCode::CONFLICT,
        PipelineError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (
        code,
        Json(ErrorBody {
            error: e.to_string(),
        }),
    )
}

/// The token mutating calls must present; None refuses them all.
#[derive(Clone)]
struct Token(Option<Arc<str>>);

/// Constant-time comparison (a token check must not leak how much of a guess was right).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(token): State<Token>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let refuse = |error: &str| {
        (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody {
                error: error.to_string(),
            }),
        )
    };
    let Some(expected) = token.0 else {
        return Err(refuse(
            "admin.token is not set in the host config: mutating calls are refused",
        ));
    };
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if same(t.as_bytes(), expected.as_bytes()) => Ok(next.run(req).await),
        Some(_) => Err(refuse("wrong admin token")),
        None => Err(refuse(
            "this call needs `Authorization: Bearer <admin.token>` (the CLI reads FERRULE_ADMIN_TOKEN or --token)",
        )),
    }
}

/// Logs a refused mutating call (401 wrong or missing token, 4xx refused plugin or config)
/// with its reason, so the host's log shows what was tried; the answer goes out unchanged.
async fn log_refused(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let reason = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    tracing::warn!(
        %method,
        path,
        status = parts.status.as_u16(),
        "admin call refused: {reason}"
    );
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The admin routes; mutating ones need `token`.
pub fn router(handle: PipelineHandle, token: Option<String>) -> Router {
    let token = Token(token.filter(|t| !t.is_empty()).map(Arc::from));
    let mutating = Router::new()
        .route("/stages/{stage}/load", post(load))
        .route("/stages/{stage}/swap", post(swap))
        .route("/stages/{stage}/rollback", post(rollback))
        .route("/stages/{stage}/quarantine", post(quarantine))
        .route("/stages/{stage}/release", post(release))
        .route("/stages/{stage}/shadow", post(shadow_start))
        .route("/stages/{stage}/shadow/promote", post(shadow_promote))
        .route("/stages/{stage}/shadow/abandon", post(shadow_abandon))
        .route_layer(axum::middleware::from_fn_with_state(token, require_token))
        .route_layer(axum::middleware::from_fn(log_refused));
    Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/stages", get(stages))
        .route("/stages/{stage}/shadow", get(shadow_report))
        .route("/dead-letters", get(dead_letters))
        .route("/writes", get(writes))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(mutating)
        .with_state(handle)
}

async fn dead_letters(State(h): State<PipelineHandle>) -> Json<Vec<crate::model::DeadLetter>> {
    let recent = h
        .stats()
        .recent_dead_letters
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Json(recent.iter().cloned().collect())
}

/// The latest write-back commands (oldest first), as their audit records; 404 without
/// `[writes]`.
async fn writes(
    State(h): State<PipelineHandle>,
) -> Result<Json<Vec<crate::writes::WriteRecord>>, ApiError> {
    match h.writes() {
        Some(w) => Ok(Json(w.recent())),
        None => Err((
            StatusCode::NOT_FOUND,
            Json(ErrorBody {
                error: "write-back is not configured (no [writes] section)".into(),
            }),
        )),
    }
}

async fn metrics(State(h): State<PipelineHandle>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&h.status()),
    )
}

async fn page(State(h): State<PipelineHandle>) -> axum::response::Html<String> {
    axum::response::Html(crate::admin_page::render(&h.status()))
}

async fn health() -> &'static str {
    "ok\n"
}

/// 200 when every sink with a link is connected and no buffer is at its limit; 503 with the
/// reasons otherwise.
async fn ready(State(h): State<PipelineHandle>) -> (StatusCode, Json<serde_json::Value>) {
    let not_ready = crate::runtime::not_ready_reasons(&h.status());
    let code = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({ "ready": not_ready.is_empty(), "reasons": not_ready })),
    )
}

async fn status(State(h): State<PipelineHandle>) -> Json<crate::runtime::PipelineStatus> {
    Json(h.status())
}

async fn stages(State(h): State<PipelineHandle>) -> Json<Vec<StageStatus>> {
    Json(h.status().stages)
}

/// A JSON body, or the default when there is none (`curl -X POST` without `-d`). Parsed
/// whatever the Content-Type says, so a body is never silently ignored; a bad one is a 400
/// naming the problem.
fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            Json(ErrorBody {
                error: format!("request body: {e}"),
            }),
        )
    })
}

async fn load(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<LoadedVersion>, ApiError> {
    let req: SwapRequest = parse_body(&body)?;
    let Some(plugin) = req.plugin else {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ErrorBody {
                error: "`plugin` (the component's path on the host) is required".into(),
            }),
        ));
    };
    h.load(&stage, &plugin, req.config.map(|c| c.to_string()))
        .await
        .map(Json)
        .map_err(api_error)
}

async fn swap(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<SwapResponse>, ApiError> {
    let req: SwapRequest = parse_body(&body)?;
    let report = match (req.plugin, req.config) {
        (Some(plugin), config) => h.swap(&stage, &plugin, config.map(|c| c.to_string())).await,
        (None, Some(config)) => h.swap_config(&stage, config.to_string()).await,
        (None, None) => h.swap_candidate(&stage).await,
    };
    report.map(|r| Json(r.into())).map_err(api_error)
}

async fn quarantine(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let reason = parse_body::<QuarantineRequest>(&body)?
        .reason
        .unwrap_or_else(|| "no reason given".into());
    h.quarantine(&stage, &reason)
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(api_error)
}

async fn shadow_start(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ShadowReport>, ApiError> {
    let req: SwapRequest = parse_body(&body)?;
    h.shadow(
        &stage,
        req.plugin.as_deref(),
        req.config.map(|c| c.to_string()),
    )
    .await
    .map(Json)
    .map_err(api_error)
}

async fn shadow_report(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
) -> Result<Json<ShadowReport>, ApiError> {
    h.shadow_report(&stage).map(Json).map_err(|e| {
        let (_, body) = api_error(e);
        // Nothing to show: no shadow run on this stage (or no such stage).
        (StatusCode::NOT_FOUND, body)
    })
}

async fn shadow_promote(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
) -> Result<Json<SwapResponse>, ApiError> {
    match h.end_shadow(&stage, true).await {
        Ok(Some(r)) => Ok(Json(r.into())),
        Ok(None) => Err(api_error(PipelineError::Stopped)),
        Err(e) => Err(api_error(e)),
    }
}

async fn shadow_abandon(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
) -> Result<Json<ShadowReport>, ApiError> {
    h.end_shadow(&stage, false).await.map_err(api_error)?;
    h.shadow_report(&stage).map(Json).map_err(api_error)
}

async fn rollback(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
) -> Result<Json<SwapResponse>, ApiError> {
    h.rollback(&stage)
        .await
        .map(|r| Json(r.into()))
        .map_err(api_error)
}

async fn release(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
) -> Result<StatusCode, ApiError> {
    h.release(&stage)
        .await
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(api_error)
}

/// Binds `addr` and serves until the task is aborted; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    handle: PipelineHandle,
    token: Option<String>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(handle, token);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin endpoint stopped: {e}");
        }
    });
    Ok((bound, task))
}

/// Client for the admin endpoint.
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl AdminClient {
    /// `admin` is `host:port` or a URL.
    pub fn new(admin: &str) -> Self {
        let base = if admin.starts_with("http") {
            admin.trim_end_matches('/').to_string()
        } else {
            format!("http://{admin}")
        };
        AdminClient {
            base,
            http: reqwest::Client::new(),
            token: None,
        }
    }

    /// Sends `token` as the bearer token of mutating calls.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    async fn post<B: Serialize>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req).await
    }

    /// `post` whose answer is JSON.
    async fn post_json<B: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        Ok(self.post(path, body).await?.json().await?)
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let req = self.http.get(format!("{}{path}", self.base));
        Ok(self.send(req).await?.json().await?)
    }

    /// Sends `req`; a refusal becomes an error carrying the endpoint's `error` text.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the admin endpoint at {}: {e}", self.base)
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: ErrorBody = resp.json().await.unwrap_or(ErrorBody {
            error: status.to_string(),
        });
        anyhow::bail!("{}", body.error)
    }

    /// Swaps to `plugin`, or with None to the stage's loaded candidate.
    pub async fn swap(
        &self,
        stage: &str,
        plugin: Option<PathBuf>,
        config: Option<serde_json::Value>,
    ) -> anyhow::Result<SwapResponse> {
        self.post_json(
            &format!("/stages/{stage}/swap"),
            Some(&SwapRequest { plugin, config }),
        )
        .await
    }

    pub async fn load(
        &self,
        stage: &str,
        plugin: PathBuf,
        config: Option<serde_json::Value>,
    ) -> anyhow::Result<LoadedVersion> {
        let body = SwapRequest {
            plugin: Some(plugin),
            config,
        };
        self.post_json(&format!("/stages/{stage}/load"), Some(&body))
            .await
    }

    pub async fn quarantine(&self, stage: &str, reason: Option<String>) -> anyhow::Result<()> {
        self.post(
            &format!("/stages/{stage}/quarantine"),
            Some(&QuarantineRequest { reason }),
        )
        .await?;
        Ok(())
    }

    /// Starts a shadow run of `plugin`, or with None of the stage's loaded candidate.
    pub async fn shadow(
        &self,
        stage: &str,
        plugin: Option<PathBuf>,
        config: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        self.post_json(
            &format!("/stages/{stage}/shadow"),
            Some(&SwapRequest { plugin, config }),
        )
        .await
    }

    pub async fn shadow_promote(&self, stage: &str) -> anyhow::Result<SwapResponse> {
        self.post_json::<(), _>(&format!("/stages/{stage}/shadow/promote"), None)
            .await
    }

    pub async fn shadow_abandon(&self, stage: &str) -> anyhow::Result<serde_json::Value> {
        self.post_json::<(), _>(&format!("/stages/{stage}/shadow/abandon"), None)
            .await
    }

    pub async fn shadow_report(&self, stage: &str) -> anyhow::Result<serde_json::Value> {
        self.get(&format!("/stages/{stage}/shadow")).await
    }

    pub async fn stages(&self) -> anyhow::Result<serde_json::Value> {
        self.get("/stages").await
    }

    pub async fn dead_letters(&self) -> anyhow::Result<serde_json::Value> {
        self.get("/dead-letters").await
    }

    pub async fn rollback(&self, stage: &str) -> anyhow::Result<SwapResponse> {
        self.post_json::<(), _>(&format!("/stages/{stage}/rollback"), None)
            .await
    }

    pub async fn release(&self, stage: &str) -> anyhow::Result<()> {
        self.post::<()>(&format!("/stages/{stage}/release"), None)
            .await?;
        Ok(())
    }

    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.get("/status").await
    }
}
