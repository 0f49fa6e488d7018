//! `HyperTransport` against a tiny raw HTTP/1.1 server written here, so each test controls the
//! exact bytes (chunking, lying Content-Length, silence, abrupt closes) and can count the TCP
//! connections the client opened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokenwell_core::{HttpTransport, SendOptions, TransportError, TransportErrorKind};
use tokenwell_http_hyper::{HyperClient, HyperTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// The test server

/// One request as the server parsed it.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does after reading a request.
enum Reply {
    /// Write these bytes and wait for the next request on the same connection.
    Raw(Vec<u8>),
    /// Write these bytes, then keep the connection open without another byte.
    RawThenHang(Vec<u8>),
    /// Write these bytes, then close the connection.
    RawThenClose(Vec<u8>),
    /// Never answer, keep the connection open.
    Hang,
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections whose handler returned (the client closed, or the reply closed it).
    closed: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    /// A server answering every request with `handler`.
    async fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Server {
        Self::spawn(Some(Arc::new(handler))).await
    }

    /// A server that accepts each connection and closes it at once, reading nothing.
    async fn closing() -> Server {
        Self::spawn(None).await
    }

    async fn spawn(handler: Option<Arc<Handler>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, ended, log) = (accepted.clone(), closed.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                match &handler {
                    None => {
                        drop(stream);
                        ended.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(handler) => {
                        let (handler, log, ended) = (handler.clone(), log.clone(), ended.clone());
                        tokio::spawn(async move {
                            serve_connection(stream, handler, log).await;
                            ended.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                }
            }
        });
        Server {
            addr,
            accepted,
            closed,
            received,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed.
    fn open(&self) -> usize {
        self.accepted() - self.closed.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<Received>>>,
) {
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buffer).await {
        let reply = handler(&request);
        log.lock().unwrap().push(request);
        match reply {
            Reply::Raw(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::RawThenHang(bytes) => {
                let _ = stream.write_all(&bytes).await;
                std::future::pending::<()>().await;
            }
            Reply::RawThenClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Reply::Hang => std::future::pending::<()>().await,
        }
    }
}

/// Read one request (head and Content-Length body); `None` once the client closed.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).ok()?;
    buffer.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer.drain(..length).collect();
    Some(Received {
        method,
        target,
        headers,
        body,
    })
}

/// A complete response with a Content-Length.
fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A complete 200 response with a chunked body and no Content-Length.
fn chunked(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in chunks {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn options(timeout: Duration, max_response_bytes: usize) -> SendOptions {
    SendOptions {
        timeout,
        max_response_bytes,
    }
}

fn get(url: &str) -> http::Request<Bytes> {
    http::Request::get(url).body(Bytes::new()).unwrap()
}

async fn send_err(
    transport: &HyperTransport,
    request: http::Request<Bytes>,
    options: SendOptions,
) -> TransportError {
    match transport.send(request, &options).await {
        Ok(response) => panic!("expected an error, got {response:?}"),
        Err(error) => error,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn ok_round_trip_carries_method_target_headers_and_body() {
    let server = Server::start(|request| {
        assert_eq!(request.method, "POST");
        Reply::Raw(response(
            "200 OK",
            &[
                ("content-type", "application/json"),
                ("x-ms-request-id", "abc-123"),
            ],
            br#"{"access_token":"t","expires_in":3599}"#,
        ))
    })
    .await;
    let transport = HyperTransport::new();
    let request = http::Request::post(server.url("/tenant/oauth2/v2.0/token?slice=testslice"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-client-sku", "tokenwell")
        .body(Bytes::from_static(
            b"grant_type=client_credentials&client_id=c",
        ))
        .unwrap();

    let response = transport
        .send(request, &SendOptions::default())
        .await
        .unwrap();

    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-ms-request-id"], "abc-123");
    assert_eq!(
        response.body().as_ref(),
        br#"{"access_token":"t","expires_in":3599}"#
    );

    let received = server.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.target, "/tenant/oauth2/v2.0/token?slice=testslice");
    assert_eq!(
        request.header("host"),
        Some(server.addr.to_string().as_str())
    );
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.header("x-client-sku"), Some("tokenwell"));
    assert_eq!(request.body, b"grant_type=client_credentials&client_id=c");
}

#[tokio::test]
async fn error_statuses_are_ok_responses() {
    let server = Server::start(|request| {
        Reply::Raw(match request.target.as_str() {
            "/bad" => response(
                "400 Bad Request",
                &[("content-type", "application/json")],
                br#"{"error":"invalid_client"}"#,
            ),
            _ => response("503 Service Unavailable", &[("retry-after", "7")], b"down"),
        })
    })
    .await;
    let transport = HyperTransport::new();

    let bad = transport
        .send(get(&server.url("/bad")), &SendOptions::default())
        .await
        .unwrap();
    assert_eq!(bad.status(), http::StatusCode::BAD_REQUEST);
    assert_eq!(bad.body().as_ref(), br#"{"error":"invalid_client"}"#);

    let down = transport
        .send(get(&server.url("/down")), &SendOptions::default())
        .await
        .unwrap();
    assert_eq!(down.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers()["retry-after"], "7");
    assert_eq!(down.body().as_ref(), b"down");
}

#[tokio::test]
async fn chunked_body_past_the_limit_is_body_too_large() {
    let server = Server::start(|_| Reply::Raw(chunked(&vec![vec![b'a'; 400]; 4]))).await;
    let transport = HyperTransport::new();

    let error = send_err(
        &transport,
        get(&server.url("/big")),
        options(Duration::from_secs(10), 1000),
    )
    .await;

    assert_eq!(error.kind(), TransportErrorKind::BodyTooLarge, "{error}");
    assert!(!error.kind().is_transient());
}

#[tokio::test]
async fn chunked_body_exactly_at_the_limit_is_accepted() {
    let server = Server::start(|_| Reply::Raw(chunked(&[vec![b'a'; 600], vec![b'b'; 400]]))).await;
    let transport = HyperTransport::new();

    let response = transport
        .send(
            get(&server.url("/edge")),
            &options(Duration::from_secs(10), 1000),
        )
        .await
        .unwrap();

    assert_eq!(response.body().len(), 1000);
    assert!(response.headers().get("content-length").is_none());
}

#[tokio::test]
async fn declared_length_past_the_limit_is_refused_before_reading() {
    // The server announces 10 MB, sends one byte and then stays silent: only a refusal based
    // on the Content-Length can answer BodyTooLarge rather than Timeout.
    let server = Server::start(|_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n".to_vec();
        bytes.push(b'x');
        Reply::RawThenHang(bytes)
    })
    .await;
    let transport = HyperTransport::new();

    let error = send_err(
        &transport,
        get(&server.url("/huge")),
        options(Duration::from_secs(30), 1000),
    )
    .await;

    assert_eq!(error.kind(), TransportErrorKind::BodyTooLarge, "{error}");
}

#[tokio::test]
async fn head_response_with_a_large_content_length_is_not_refused() {
    // A HEAD answer's Content-Length describes the GET body; the message itself has none.
    let server = Server::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n".to_vec())
    })
    .await;
    let transport = HyperTransport::new();
    let request = http::Request::head(server.url("/meta"))
        .body(Bytes::new())
        .unwrap();

    let response = transport
        .send(request, &options(Duration::from_secs(10), 1000))
        .await
        .unwrap();

    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "10000000");
    assert!(response.body().is_empty());
}

#[tokio::test]
async fn server_that_never_answers_times_out() {
    let server = Server::start(|_| Reply::Hang).await;
    let transport = HyperTransport::new();
    let timeout = Duration::from_millis(300);

    let started = Instant::now();
    let error = send_err(
        &transport,
        get(&server.url("/silent")),
        options(timeout, 1000),
    )
    .await;
    let elapsed = started.elapsed();

    assert_eq!(error.kind(), TransportErrorKind::Timeout, "{error}");
    assert!(error.kind().is_transient());
    assert!(elapsed >= timeout, "returned after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "returned after {elapsed:?}"
    );
    assert_eq!(
        server.received().len(),
        1,
        "the request did reach the server"
    );
}

#[tokio::test]
async fn body_that_stalls_after_the_head_times_out() {
    // The timeout bounds reading the whole body, not only the response head.
    let server = Server::start(|_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[b'x'; 10]);
        Reply::RawThenHang(bytes)
    })
    .await;
    let transport = HyperTransport::new();
    let timeout = Duration::from_millis(300);

    let started = Instant::now();
    let error = send_err(
        &transport,
        get(&server.url("/slow")),
        options(timeout, 1000),
    )
    .await;
    let elapsed = started.elapsed();

    assert_eq!(error.kind(), TransportErrorKind::Timeout, "{error}");
    assert!(elapsed >= timeout, "returned after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "returned after {elapsed:?}"
    );
}

#[tokio::test]
async fn closed_port_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let transport = HyperTransport::new();

    let error = send_err(
        &transport,
        get(&format!("http://{addr}/token")),
        options(Duration::from_secs(10), 1000),
    )
    .await;

    assert_eq!(error.kind(), TransportErrorKind::Connect, "{error}");
    assert!(error.kind().is_transient());
}

#[tokio::test]
async fn accept_then_close_is_a_body_error() {
    // TCP connected, so it is not Connect: the connection broke before any response, which is
    // Body (transient), as with the reqwest transport.
    let server = Server::closing().await;
    let transport = HyperTransport::new();

    let error = send_err(
        &transport,
        get(&server.url("/token")),
        options(Duration::from_secs(10), 1000),
    )
    .await;

    assert_eq!(error.kind(), TransportErrorKind::Body, "{error}");
    assert!(error.kind().is_transient());
    assert_eq!(server.accepted(), 1, "a fresh connection is not retried");
}

#[tokio::test]
async fn failed_tls_handshake_is_a_connect_error() {
    // https:// to a server that closes during the handshake: the connector fails, nothing was
    // sent, so it is Connect — unlike the same close on plain HTTP above.
    let server = Server::closing().await;
    let transport = HyperTransport::new();

    let error = send_err(
        &transport,
        get(&format!("https://{}/token", server.addr)),
        options(Duration::from_secs(10), 1000),
    )
    .await;

    assert_eq!(error.kind(), TransportErrorKind::Connect, "{error}");
}

#[tokio::test]
async fn connection_dropped_mid_body_is_a_body_error() {
    let server = Server::start(|_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[b'x'; 10]);
        Reply::RawThenClose(bytes)
    })
    .await;
    let transport = HyperTransport::new();

    let error = send_err(
        &transport,
        get(&server.url("/cut")),
        options(Duration::from_secs(10), 1000),
    )
    .await;

    assert_eq!(error.kind(), TransportErrorKind::Body, "{error}");
}

#[tokio::test]
async fn garbage_instead_of_a_response_is_a_body_error() {
    let server =
        Server::start(|_| Reply::RawThenClose(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())).await;
    let transport = HyperTransport::new();

    let error = send_err(
        &transport,
        get(&server.url("/token")),
        options(Duration::from_secs(10), 1000),
    )
    .await;

    assert_eq!(error.kind(), TransportErrorKind::Body, "{error}");
}

#[tokio::test]
async fn relative_uri_is_an_invalid_request() {
    let transport = HyperTransport::new();

    let error = send_err(&transport, get("/token"), SendOptions::default()).await;

    assert_eq!(error.kind(), TransportErrorKind::InvalidRequest, "{error}");
}

/// Poll `done` until it holds, yielding to the runtime in between (each yield lets every woken
/// task and the I/O driver run first; no timer); fail the test if it does not within 10 s.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::task::yield_now().await;
    }
}

/// hyper-util hands a connection back to its pool from a background task once the previous
/// body has been read to the end (unless the connection was already idle when the response
/// arrived); a request sent before that task ran would race it and dial a new connection.
/// Wait for the task to end: the only tasks left on the test's runtime are then the server's
/// accept loop and the two ends (server handler, client connection) of each open connection.
/// The transport must not run hyper-util's idle-pool reaper (`pool_idle_timeout(None)`, or no
/// idle connections at all), which would be one more task.
async fn let_the_pool_settle(server: &Server) {
    let metrics = tokio::runtime::Handle::current().metrics();
    wait_until("the pool took the connection back", || {
        metrics.num_alive_tasks() == 1 + 2 * server.open()
    })
    .await;
}

#[tokio::test]
async fn pooled_connection_is_reused() {
    let server = Server::start(|_| Reply::Raw(response("200 OK", &[], b"pong"))).await;
    // The defaults but the idle-pool reaper (see `let_the_pool_settle`).
    let transport = HyperTransport::builder()
        .pool_idle_timeout(None)
        .build()
        .unwrap();
    let clone = transport.clone();

    for round in 0..3 {
        let via = if round % 2 == 0 { &transport } else { &clone };
        let response = via
            .send(get(&server.url("/ping")), &SendOptions::default())
            .await
            .unwrap();
        assert_eq!(response.body().as_ref(), b"pong");
        let_the_pool_settle(&server).await;
    }

    assert_eq!(server.received().len(), 3);
    assert_eq!(
        server.accepted(),
        1,
        "one TCP connection for all three requests"
    );
}

#[tokio::test]
async fn no_idle_connections_means_one_connection_per_request() {
    let server = Server::start(|_| Reply::Raw(response("200 OK", &[], b"pong"))).await;
    let transport = HyperTransport::builder()
        .pool_max_idle_per_host(0)
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    for _ in 0..2 {
        transport
            .send(get(&server.url("/ping")), &SendOptions::default())
            .await
            .unwrap();
        let_the_pool_settle(&server).await;
    }

    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn wraps_a_client_of_your_own() {
    let server = Server::start(|_| Reply::Raw(response("200 OK", &[], b"mine"))).await;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: HyperClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let transport = HyperTransport::from(client);
    let shared: Arc<dyn HttpTransport> = Arc::new(transport);

    let response = shared
        .send(get(&server.url("/own")), &SendOptions::default())
        .await
        .unwrap();

    assert_eq!(response.body().as_ref(), b"mine");
}
