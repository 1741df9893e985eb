//! `haimg lab serve` (started by `up` inside the lab's namespace): the metadata stand-in at
//! 169.254.169.254 and the lab's Auto Scaling on the lab's own address, over plain HTTP/1.1
//! (one request per connection, as the SDKs' clients make them here).
//!
//! Both read the node identities again on every request, so the lab can change a lifecycle
//! state while they run; Auto Scaling appends what the nodes tell it to the event file,
//! which the lab waits on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::asg;
use super::imds::{self, Identity, Tokens};
use crate::error::{Error, Result};

/// A request head over this is refused; bodies (Auto Scaling forms) are far smaller still.
const MAX_HEAD: usize = 8192;
const MAX_BODY: usize = 65_536;

#[derive(Clone)]
struct Shared {
    identities: PathBuf,
    events: PathBuf,
    tokens: Arc<Mutex<Tokens>>,
    completed: Arc<Mutex<BTreeSet<String>>>,
}

impl Shared {
    fn nodes(&self) -> BTreeMap<String, Identity> {
        std::fs::read(&self.identities)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

pub async fn run(
    imds_at: SocketAddr,
    asg_at: SocketAddr,
    identities: PathBuf,
    events: PathBuf,
) -> Result<()> {
    let bind = |at: SocketAddr| async move {
        tokio::net::TcpListener::bind(at)
            .await
            .map_err(|e| Error::Runtime(format!("lab serve: cannot listen on {at}: {e}")))
    };
    let (imds_l, asg_l) = (bind(imds_at).await?, bind(asg_at).await?);
    let completed = asg::events(&std::fs::read_to_string(&events).unwrap_or_default())
        .into_iter()
        .filter_map(|e| match e {
            asg::Event::CompleteLifecycleAction { instance, .. } => Some(instance),
            _ => None,
        })
        .collect();
    let shared = Shared {
        identities,
        events,
        tokens: Arc::new(Mutex::new(Tokens::default())),
        completed: Arc::new(Mutex::new(completed)),
    };
    eprintln!("metadata stand-in listening on {imds_at}; auto scaling on {asg_at}");
    let s2 = shared.clone();
    tokio::select! {
        r = accept(imds_l, shared, Service::Imds) => r,
        r = accept(asg_l, s2, Service::AutoScaling) => r,
    }
}

#[derive(Clone, Copy)]
enum Service {
    Imds,
    AutoScaling,
}

async fn accept(l: tokio::net::TcpListener, shared: Shared, service: Service) -> Result<()> {
    loop {
        let Ok((stream, peer)) = l.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let std::net::IpAddr::V4(peer) = peer.ip() else {
                return;
            };
            let _ = handle(stream, peer, &shared, service).await;
        });
    }
}

/// Reads one request: its head, and its body by `Content-Length`. `None` for a client that
/// is silent for 10 s, closes early, or sends more than the bounds.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len = imds::parse(&head)?
            .headers
            .get("content-length")
            .map_or(Some(0), |v| v.parse::<usize>().ok())?;
        if len > MAX_BODY {
            return None;
        }
        let mut body = buf[end + 4..].to_vec();
        while body.len() < len {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
        Some((head, body))
    })
    .await
    .ok()
    .flatten()
}

async fn handle(
    mut stream: tokio::net::TcpStream,
    peer: Ipv4Addr,
    shared: &Shared,
    service: Service,
) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut stream).await else {
        return Ok(());
    };
    let Some(req) = imds::parse(&head) else {
        return respond(&mut stream, 400, "text/plain", "", None).await;
    };
    match service {
        Service::Imds => {
            let nodes = shared.nodes();
            let r = {
                let mut t = shared.tokens.lock().expect("not poisoned");
                imds::answer(
                    &req,
                    peer,
                    nodes.get(&peer.to_string()),
                    &mut t,
                    Instant::now(),
                )
            };
            // The path and status only: never a token or a credential.
            eprintln!("{peer} {} {} -> {}", req.method, req.path, r.status);
            respond(&mut stream, r.status, "text/plain", &r.body, r.ttl).await
        }
        Service::AutoScaling => {
            let form: BTreeMap<String, String> = form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let signed = asg::signed_by_lab(&req.headers);
            let nodes = shared.nodes();
            let reply = {
                let mut done = shared.completed.lock().expect("not poisoned");
                let reply = if req.method == "POST" {
                    asg::answer(&form, signed, &nodes, &done)
                } else {
                    asg::Reply {
                        status: 405,
                        body: String::new(),
                        event: None,
                    }
                };
                if let Some(e) = &reply.event {
                    if let asg::Event::CompleteLifecycleAction { instance, .. } = e {
                        done.insert(instance.clone());
                    }
                    let line = serde_json::to_string(e).expect("plain data") + "\n";
                    let appended = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&shared.events)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
                    if let Err(err) = appended {
                        eprintln!("lab serve: cannot record {line}: {err}");
                    }
                }
                reply
            };
            let action = form.get("Action").map(String::as_str).unwrap_or("-");
            let instance = form.get("InstanceId").map(String::as_str).unwrap_or("-");
            eprintln!("{peer} autoscaling {action} {instance} -> {}", reply.status);
            respond(&mut stream, reply.status, "text/xml", &reply.body, None).await
        }
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    ttl: Option<u64>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let ttl = ttl
        .map(|t| format!("X-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"))
        .unwrap_or_default();
    let out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{ttl}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}
