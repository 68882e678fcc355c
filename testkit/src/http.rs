//! A small HTTP/1.1 client (hyper) for the RabbitMQ management API and setgate's admin API.

use anyhow::Context;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// One HTTP response: status code and body text.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response is not JSON: {}", self.body))
    }
}

/// Credentials or a bearer token for a request.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// No `Authorization` header.
    None,
    /// HTTP basic authentication.
    Basic(&'a str, &'a str),
    /// `Authorization: Bearer TOKEN`.
    Bearer(&'a str),
}

/// Sends one request with a 10 s deadline and returns status and body.
pub async fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    auth: Auth<'_>,
    body: Option<String>,
) -> anyhow::Result<Response> {
    tokio::time::timeout(
        Duration::from_secs(10),
        request_inner(method, addr, path, auth, body),
    )
    .await
    .with_context(|| format!("{method} http://{addr}{path} timed out"))?
}

async fn request_inner(
    method: &str,
    addr: SocketAddr,
    path: &str,
    auth: Auth<'_>,
    body: Option<String>,
) -> anyhow::Result<Response> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    match auth {
        Auth::None => {}
        Auth::Basic(user, pass) => {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            req = req.header("authorization", format!("Basic {token}"));
        }
        Auth::Bearer(token) => req = req.header("authorization", format!("Bearer {token}")),
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// `GET` without credentials.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    request("GET", addr, path, Auth::None, None).await
}
