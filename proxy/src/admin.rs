//! The admin HTTP server: `/healthz`, `/readyz`, `/metrics`, the JSON API and the status page.
//!
//! Read endpoints are open (bind the admin address to a management network); every endpoint that
//! changes something needs `Authorization: Bearer TOKEN` when `token_file` is set.

use crate::config::MAX_WEIGHT;
use crate::pool::AdminState;
use crate::shared::Shared;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// A JSON document the binary adds to the API (federation links, VRRP state).
pub type JsonFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// An action the binary adds to the API: called with the path segments after its prefix,
/// answers an HTTP status code and a JSON body.
pub type ActionFn = Arc<
    dyn Fn(Vec<String>) -> std::pin::Pin<Box<dyn std::future::Future<Output = (u16, Value)> + Send>>
        + Send
        + Sync,
>;

/// What the binary plugs into the admin server: the metrics renderer, extra JSON endpoints and
/// actions. This keeps `proxy` free of `federation` and `vrrp`: it serves their status and
/// controls without knowing them.
#[derive(Clone, Default)]
pub struct AdminExtensions {
    /// Renders `/metrics` (Prometheus text).
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// `GET PATH` answers the function's JSON, e.g. `("/api/links", ...)`.
    pub json: Vec<(String, JsonFn)>,
    /// `POST PREFIX/...` (bearer token when set) calls the action with the rest of the path,
    /// e.g. `("/api/links", ...)` for `POST /api/links/NAME/pause`.
    pub actions: Vec<(String, ActionFn)>,
}

impl std::fmt::Debug for AdminExtensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminExtensions")
            .field("metrics", &self.metrics.is_some())
            .field(
                "json",
                &self.json.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field(
                "actions",
                &self.actions.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Most admin connections served at once; more wait in the kernel's queue. The admin API is for
/// operators and dashboards: a few dozen is plenty, and a flood must not cost the edge memory.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// How long a client may take to send its request headers (slowloris).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the admin address; [`serve`] starts answering on it.
pub(crate) async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(listen).await?;
    info!(addr = %listener.local_addr()?, "admin server listening");
    Ok(listener)
}

/// Serves the admin API on `listener` until the shutdown is over (during the drain `/readyz`
/// answers 503, which is what a balancer in front needs to see).
pub(crate) fn serve(listener: TcpListener, shared: Arc<Shared>, ext: AdminExtensions) {
    let ext = Arc::new(ext);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("never closed"),
                _ = shared.closing.cancelled() => return,
            };
            let tcp = tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shared.closing.cancelled() => return,
            };
            let (shared, ext) = (shared.clone(), ext.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let closing = shared.closing.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let (shared, ext) = (shared.clone(), ext.clone());
                    async move { Ok::<_, Infallible>(route(req, &shared, &ext).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = closing.cancelled() => {}
                }
            });
        }
    });
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .unwrap()
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Resp {
    json_resp(status, &json!({ "error": msg.into() }))
}

async fn route(req: Request<Incoming>, shared: &Arc<Shared>, ext: &AdminExtensions) -> Resp {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(
                crate::status_page::HTML.as_bytes(),
            )))
            .unwrap(),
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["readyz"]) => match shared.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, ["metrics"]) => match &ext.metrics {
            Some(render) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(render())))
                .unwrap(),
            None => text(StatusCode::NOT_FOUND, "no metrics recorder installed\n"),
        },
        (&Method::GET, ["api", "pools"]) => {
            json_resp(StatusCode::OK, &crate::status::pools(shared))
        }
        (&Method::GET, ["api", "listeners"]) => {
            json_resp(StatusCode::OK, &crate::status::listeners(shared))
        }
        (&Method::GET, ["api", "sets"]) => json_resp(StatusCode::OK, &crate::status::sets(shared)),
        (&Method::GET, ["api", "route"]) => {
            let key = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "key")
                .map(|(_, v)| v.into_owned());
            match key {
                Some(key) => match crate::status::route(shared, &key) {
                    Some(v) => json_resp(StatusCode::OK, &v),
                    None => error(StatusCode::NOT_FOUND, "no [routing] section in the config"),
                },
                None => error(
                    StatusCode::BAD_REQUEST,
                    "give the key to route: /api/route?key=USER",
                ),
            }
        }
        (&Method::POST, ["api", "pools", pool, "servers", server, "state"]) => {
            // Names arrive percent-encoded (the status page uses encodeURIComponent).
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let (pool, server) = (decode(pool), decode(server));
            if let Err(resp) = authorize(&req, shared) {
                return resp;
            }
            set_state(req, shared, &pool, &server).await
        }
        (&Method::POST, _) if action_of(ext, &path).is_some() => {
            let Some((action, rest)) = action_of(ext, &path) else {
                unreachable!("matched above");
            };
            if let Err(resp) = authorize(&req, shared) {
                return resp;
            }
            let args = rest
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect();
            let (code, body) = action(args).await;
            json_resp(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &body,
            )
        }
        (&Method::GET, _) => match ext.json.iter().find(|(p, _)| *p == path) {
            Some((_, f)) => json_resp(StatusCode::OK, &f()),
            None => error(StatusCode::NOT_FOUND, format!("no endpoint {path}")),
        },
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {path} is not supported", req.method()),
        ),
    }
}

/// The action whose prefix the path starts with (as whole segments), and the rest.
fn action_of<'a>(ext: &'a AdminExtensions, path: &'a str) -> Option<(&'a ActionFn, &'a str)> {
    ext.actions.iter().find_map(|(prefix, f)| {
        let rest = path.strip_prefix(prefix.as_str())?;
        rest.starts_with('/').then_some((f, rest))
    })
}

#[allow(clippy::result_large_err)]
fn authorize(req: &Request<Incoming>, shared: &Shared) -> Result<(), Resp> {
    let snap = shared.snapshot();
    let Some(token) = snap.token.as_ref().map(|t| t.expose()) else {
        return Ok(());
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer TOKEN (see admin.token_file)",
        );
        resp.headers_mut()
            .insert("www-authenticate", "Bearer".parse().unwrap());
        Err(resp)
    }
}

/// Compares without stopping at the first difference, so response time does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a `POST .../state` asks for: an admin state, a weight, or both.
#[derive(Debug, Default, PartialEq, Eq)]
struct StateRequest {
    admin: Option<AdminState>,
    weight: Option<u32>,
}

/// Reads `{"state":"drain"}`, `{"weight":3}`, both in one object, or a bare `drain`.
fn parse_state_request(body: &[u8]) -> Result<StateRequest, String> {
    let usage =
        "send {\"state\":\"drain\"} (ready, drain, maint), {\"weight\":N} (0 to 256) or both";
    let parse_admin = |s: &str| match s {
        "ready" => Ok(AdminState::Ready),
        "drain" => Ok(AdminState::Drain),
        "maint" => Ok(AdminState::Maint),
        other => Err(format!(
            "state {other:?} is not one of ready, drain, maint; {usage}"
        )),
    };
    let mut req = StateRequest::default();
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| *k != "state" && *k != "weight") {
                return Err(format!("unknown field {k:?}; {usage}"));
            }
            if let Some(s) = o.get("state") {
                let s = s
                    .as_str()
                    .ok_or_else(|| format!("state must be a string; {usage}"))?;
                req.admin = Some(parse_admin(s)?);
            }
            if let Some(w) = o.get("weight") {
                let w = w
                    .as_u64()
                    .filter(|w| *w <= u64::from(MAX_WEIGHT))
                    .ok_or_else(|| {
                        format!("weight {w} is not a whole number from 0 to {MAX_WEIGHT}; {usage}")
                    })?;
                req.weight = Some(w as u32);
            }
        }
        Ok(Value::String(s)) => req.admin = Some(parse_admin(&s)?),
        _ => req.admin = Some(parse_admin(String::from_utf8_lossy(body).trim())?),
    }
    if req == StateRequest::default() {
        return Err(format!("nothing to change; {usage}"));
    }
    Ok(req)
}

async fn set_state(req: Request<Incoming>, shared: &Arc<Shared>, pool: &str, server: &str) -> Resp {
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
    };
    let wanted = match parse_state_request(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(s) = shared.server_state(pool, server) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no server {server:?} in pool {pool:?}"),
        );
    };
    if let Some(state) = wanted.admin {
        s.set_admin(state);
        info!(pool, server, ?state, "admin state changed through the API");
    }
    if let Some(weight) = wanted.weight {
        s.set_weight(weight);
        info!(pool, server, weight, "weight changed through the API");
    }
    let mut body = json!({
        "pool": pool,
        "server": server,
        "admin": s.admin(),
        "weight": s.weight(),
        "config_weight": s.config_weight(),
    });
    if let Err(e) = crate::state_file::persist(shared).await {
        body["state_file_error"] = json!(e);
    }
    json_resp(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_requests() {
        let ok = |b: &str| parse_state_request(b.as_bytes()).unwrap();
        let err = |b: &str| parse_state_request(b.as_bytes()).unwrap_err();
        assert_eq!(ok(r#"{"state":"drain"}"#).admin, Some(AdminState::Drain));
        assert_eq!(ok("maint").admin, Some(AdminState::Maint));
        assert_eq!(ok(r#""ready""#).admin, Some(AdminState::Ready));
        assert_eq!(
            ok(r#"{"weight":3}"#),
            StateRequest {
                admin: None,
                weight: Some(3)
            }
        );
        assert_eq!(
            ok(r#"{"state":"ready","weight":0}"#),
            StateRequest {
                admin: Some(AdminState::Ready),
                weight: Some(0)
            }
        );
        assert!(err(r#"{"weight":257}"#).contains("0 to 256"));
        assert!(err(r#"{"weight":-1}"#).contains("0 to 256"));
        assert!(err(r#"{"weight":1.5}"#).contains("0 to 256"));
        assert!(err(r#"{"wieght":1}"#).contains("unknown field \"wieght\""));
        assert!(err("{}").contains("nothing to change"));
        assert!(err("sleep").contains("not one of ready, drain, maint"));
    }
}
