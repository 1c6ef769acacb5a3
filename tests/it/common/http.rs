//! A small HTTP/1.1 client for the management API, over tokio so it can run
//! on the same runtime as an in-process broker.
//!
//! Against another broker (`LEVERET_TEST_URI` set), the API address comes
//! from `LEVERET_TEST_MGMT` (e.g. `127.0.0.1:15672`, RabbitMQ's management
//! plugin).

use super::TestBroker;
use base64::Engine;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The management API of one broker, as one user.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
}

/// A response: status code, JSON body (`Value::Null` when empty or not
/// JSON) and the raw body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub json: Value,
    pub text: String,
}

impl Api {
    /// The API of `broker` as guest/guest, or `None` when it has none (another
    /// broker without `LEVERET_TEST_MGMT`).
    pub fn of(broker: &TestBroker) -> Option<Api> {
        let addr = match broker.mgmt_addr {
            Some(a) => a,
            None => std::env::var("LEVERET_TEST_MGMT").ok()?.parse().ok()?,
        };
        Some(Api {
            addr,
            user: "guest".into(),
            password: "guest".into(),
        })
    }

    /// The same API as another user.
    pub fn as_user(&self, user: &str, password: &str) -> Api {
        Api {
            addr: self.addr,
            user: user.into(),
            password: password.into(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.request("PUT", path, Some(body.to_string())).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request("POST", path, Some(body.to_string())).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None).await
    }

    /// One request with a raw body (for malformed-JSON tests).
    pub async fn request(&self, method: &str, path: &str, body: Option<String>) -> Reply {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        raw_request(self.addr, method, path, Some(&token), body).await
    }
}

/// One HTTP/1.1 request; `token` is the base64 basic-auth credential.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let authorization = token
        .map(|t| format!("Authorization: Basic {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or_default();
    let content = if body.is_empty() && method != "PUT" && method != "POST" {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}{content}Connection: close\r\n\r\n{body}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
        text: body,
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}
