//! The agent's small HTTP endpoint on the metrics address: `/readyz` (200
//! once probes are attached), `/healthz`, and `/metrics`.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Shared state the endpoint reports.
#[derive(Default)]
pub struct Health {
    /// Probes attached and the pipeline running.
    pub ready: AtomicBool,
    /// Renders the Prometheus text exposition.
    pub metrics: std::sync::Mutex<Option<Box<dyn Fn() -> String + Send>>>,
}

/// Binds `addr` (so a busy port fails before any probe is loaded).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr} (set --metrics-addr)"))
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let _ = handle(sock, &health).await;
        });
    }
}

async fn handle(mut sock: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let path = loop {
        let n = sock.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("/").to_owned(),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut sock, "400 Bad Request", "text/plain", "bad request\n").await,
        }
    };
    match path.split('?').next().unwrap_or("") {
        "/readyz" => {
            if health.ready.load(Ordering::Acquire) {
                respond(&mut sock, "200 OK", "text/plain", "ready\n").await
            } else {
                respond(
                    &mut sock,
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n",
                )
                .await
            }
        }
        "/healthz" => respond(&mut sock, "200 OK", "text/plain", "ok\n").await,
        "/metrics" => {
            let body = health
                .metrics
                .lock()
                .ok()
                .and_then(|m| m.as_ref().map(|f| f()))
                .unwrap_or_default();
            respond(&mut sock, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        _ => respond(&mut sock, "404 Not Found", "text/plain", "not found\n").await,
    }
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
