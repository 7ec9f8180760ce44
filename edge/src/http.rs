//! The status page and HTTP API of `captiond` (`[http]`): axum, which the embedded broker
//! (rumqttd) already links, on a single-threaded tokio runtime of its own thread.
//!
//! - `GET /`: a self-contained page (no CDN, no build step) polling the API.
//! - `GET /api/status`, `GET /api/cameras/<name>/latest.jpg`,
//!   `GET /api/cameras/<name>/captions?limit=N`.
//! - `POST /api/caption`: one JPEG/PNG in, the daemon's [`CaptionEvent`] JSON out; bodies
//!   over `max_body_bytes` get 413, non-images 400, and more than `queue` requests at once
//!   503 with `Retry-After`. Inference shares one lock with the frame loop, so the board
//!   never runs two at a time.
//! - `GET /metrics`: Prometheus text.
//!
//! With a token set, every endpoint but `/metrics` wants `Authorization: Bearer <token>`
//! (or `?token=<token>`, so the page and its pictures work from a browser).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use caption_proto::mqtt::{CaptionEvent, Origin, StageLatency};
use caption_proto::preprocess::decode_rgb;

use crate::hub::Hub;
pub use crate::pipeline::Inference;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen {listen}: {source}")]
    Listen {
        listen: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Settings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub max_body_bytes: usize,
    pub queue: usize,
    /// Most captions `/captions` returns.
    pub history: usize,
}

struct App {
    hub: Arc<Hub>,
    inference: Inference,
    token: Option<String>,
    queue: usize,
    history: usize,
    in_flight: AtomicUsize,
    sequence: AtomicU64,
    run_id: u64,
}

/// Bind `settings.listen` now (so a taken address is an error at start) and serve on a
/// thread of its own.
pub fn start(settings: Settings, hub: Arc<Hub>, inference: Inference) -> Result<(), HttpError> {
    let listen = settings.listen;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| HttpError::Listen { listen, source })?;
    let bound = listener.local_addr().unwrap_or(listen);
    let app = Arc::new(App {
        hub,
        inference,
        token: settings.token,
        queue: settings.queue,
        history: settings.history,
        in_flight: AtomicUsize::new(0),
        sequence: AtomicU64::new(0),
        run_id: caption_proto::mqtt::new_run_id(),
    });
    let router = router(app, settings.max_body_bytes);
    // Posted images are captioned on one blocking thread, one after the other (they take
    // the inference lock anyway): each extra thread would keep its own malloc arena of
    // tract's buffers (peak RSS 244 MB with 4 clients on 4 threads, 135 MB on one).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .map_err(|source| HttpError::Listen { listen, source })?;
    std::thread::Builder::new()
        .name("captiond-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("http.listen {listen}: {e}");
                        return;
                    }
                };
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("the HTTP server stopped: {e}");
                }
            })
        })
        .map_err(|source| HttpError::Listen { listen, source })?;
    tracing::info!("status page and HTTP API on http://{bound}/");
    Ok(())
}

fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/cameras/:name/latest.jpg", get(latest_jpg))
        .route("/api/cameras/:name/captions", get(captions))
        .route(
            "/api/caption",
            post(caption).layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Equal in time whatever the position of the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn auth(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = &app.token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/metrics" {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| {
            kv.strip_prefix("token=")
                .map(|t| percent_decode(t).unwrap_or_default())
        });
    if bearer.is_some_and(|b| same(b, token)) || query.is_some_and(|q| same(&q, token)) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "a token is required: Authorization: Bearer <token>, or ?token=<token>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"captiond\""),
    );
    response
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status.html"),
    )
        .into_response()
}

async fn status(State(app): State<Arc<App>>) -> Response {
    Json(app.hub.status()).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.hub.metrics(),
    )
        .into_response()
}

async fn latest_jpg(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if !app.hub.has_camera(&name) {
        return error(StatusCode::NOT_FOUND, format!("no camera {name:?}"));
    }
    match app.hub.snapshot(&name) {
        Some(jpeg) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            jpeg.as_ref().clone(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("camera {name:?} has no captioned frame yet"),
        ),
    }
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn captions(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    let limit = q.limit.unwrap_or(10).min(app.history);
    match app.hub.captions(&name, limit) {
        Some(list) => Json(list).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no camera {name:?}")),
    }
}

/// Leaves the admission queue when dropped (the request answered or abandoned).
struct Admitted(Arc<App>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn caption(State(app): State<Arc<App>>, body: Bytes) -> Response {
    if app.in_flight.fetch_add(1, Ordering::AcqRel) >= app.queue {
        app.in_flight.fetch_sub(1, Ordering::AcqRel);
        app.hub.frames.http_rejected.fetch_add(1, Ordering::Relaxed);
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} requests are already queued; retry shortly", app.queue),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let admitted = Admitted(app.clone());
    let result = tokio::task::spawn_blocking(move || caption_image(&admitted.0, &body)).await;
    match result {
        Ok(Ok(event)) => Json(event).into_response(),
        Ok(Err((status, message))) => error(status, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The event for one posted image, or the status and reason it was refused with.
fn caption_image(app: &App, body: &[u8]) -> Result<CaptionEvent, (StatusCode, String)> {
    let started = Instant::now();
    let captured_at = SystemTime::now();
    if body.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "the body is empty: send one JPEG or PNG image".into(),
        ));
    }
    let rgb = decode_rgb(body, std::path::Path::new("<request body>"))
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let engine = &app.inference.engine;
    let pre = engine.preprocessing();
    let pixels = pre.normalize(&pre.resize(rgb));
    let decode = started.elapsed();
    let (caption, times) = {
        let _one_at_a_time = app.inference.lock.lock().unwrap_or_else(|e| e.into_inner());
        engine
            .caption_pixels(&pixels, app.inference.beam, decode)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    let sequence = app.sequence.fetch_add(1, Ordering::Relaxed);
    app.hub.frames.http_captions.fetch_add(1, Ordering::Relaxed);
    let origin = Origin {
        camera: "http".into(),
        run_id: app.run_id,
        sequence,
        captured_at,
        image: None,
    };
    Ok(CaptionEvent::new(
        origin,
        caption.text,
        caption.hypothesis.mean_log_prob() as f64,
        engine.manifest().model_id.clone(),
        StageLatency::from_stages(Duration::ZERO, decode, times.encoder, times.decoder),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_query_values_decode() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
