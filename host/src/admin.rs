//! The admin endpoint (HTTP on 127.0.0.1 by default) and its client, used by
//! `ferrule plugin swap|rollback|release` and `ferrule status`:
//! `GET /status`, `POST /stages/{stage}/swap` (`{"plugin": "<path>"}`),
//! `POST /stages/{stage}/rollback`, `POST /stages/{stage}/release`.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::pipeline::{InstallReport, PipelineError, PipelineHandle};

#[derive(Deserialize, Serialize)]
pub struct SwapRequest {
    pub plugin: PathBuf,
    /// New plugin config (JSON object); absent keeps the running config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
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

pub fn router(handle: PipelineHandle) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/stages/{stage}/swap", post(swap))
        .route("/stages/{stage}/rollback", post(rollback))
        .route("/stages/{stage}/release", post(release))
        .with_state(handle)
}

async fn status(State(h): State<PipelineHandle>) -> Json<crate::pipeline::PipelineStatus> {
    Json(h.status())
}

async fn swap(
    State(h): State<PipelineHandle>,
    Path(stage): Path<String>,
    Json(req): Json<SwapRequest>,
) -> Result<Json<SwapResponse>, ApiError> {
    h.swap(&stage, &req.plugin, req.config.map(|c| c.to_string()))
        .await
        .map(|r| Json(r.into()))
        .map_err(api_error)
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
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(handle);
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
        }
    }

    async fn post<B: Serialize>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the admin endpoint at {}: {e}", self.base)
        })?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            let status = resp.status();
            let body: ErrorBody = resp.json().await.unwrap_or(ErrorBody {
                error: status.to_string(),
            });
            anyhow::bail!("{}", body.error)
        }
    }

    pub async fn swap(
        &self,
        stage: &str,
        plugin: PathBuf,
        config: Option<serde_json::Value>,
    ) -> anyhow::Result<SwapResponse> {
        Ok(self
            .post(
                &format!("/stages/{stage}/swap"),
                Some(&SwapRequest { plugin, config }),
            )
            .await?
            .json()
            .await?)
    }

    pub async fn rollback(&self, stage: &str) -> anyhow::Result<SwapResponse> {
        Ok(self
            .post::<()>(&format!("/stages/{stage}/rollback"), None)
            .await?
            .json()
            .await?)
    }

    pub async fn release(&self, stage: &str) -> anyhow::Result<()> {
        self.post::<()>(&format!("/stages/{stage}/release"), None)
            .await?;
        Ok(())
    }

    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .http
            .get(format!("{}/status", self.base))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot reach the admin endpoint at {}: {e}", self.base)
            })?;
        Ok(resp.json().await?)
    }
}
