//! Errors name what a person needs (issue 15): the URL a token request went to when the answer
//! is an error page, and the root cause of a failed TLS handshake in the transport error's
//! `Display` — on each transport, over real sockets.

mod support;

use tokenwell_core::{Error, RetryPolicy, TransportErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{CLIENT_SECRET, Rig, SCOPE, TENANT, Transport};

over_each_transport!(
    an_error_page_names_the_url_it_came_from,
    an_oauth_error_names_the_token_endpoint,
    a_tls_handshake_with_a_plain_http_server_shows_its_root_cause,
);

/// A loopback web server that is not an identity provider: every request, whatever its path,
/// gets `404 Not Found` with an HTML page. Returns its base URL.
async fn not_found_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the head and the declared body, so the answer never races the request.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if seen.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let page = "<html><body><h1>404 Not Found</h1></body></html>";
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    base
}

async fn an_error_page_names_the_url_it_came_from(t: Transport) {
    let rig = Rig::start(t).await;
    let server = not_found_server().await;
    let app = rig
        .builder()
        .authority(format!("{server}/common"))
        .build()
        .unwrap();
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    let idp = err.idp_error().expect("an HTTP error answer");
    assert_eq!((idp.status, idp.error.as_str()), (404, "http_404"));
    let url = format!("{server}/common/oauth2/v2.0/token");
    assert_eq!(idp.endpoint.as_deref(), Some(url.as_str()));
    let shown = err.to_string();
    assert!(shown.contains(&url), "{shown}");
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
}

async fn an_oauth_error_names_the_token_endpoint(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig
        .builder()
        .credential(tokenwell_core::ClientCredential::secret("wrong-secret"))
        .build()
        .unwrap();
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(
        shown.contains(&rig.emulator.token_endpoint(TENANT)),
        "{shown}"
    );
    assert!(!shown.contains("wrong-secret"), "{shown}");
}

async fn a_tls_handshake_with_a_plain_http_server_shows_its_root_cause(t: Transport) {
    let rig = Rig::start(t).await;
    // The emulator speaks plain HTTP: it answers the TLS ClientHello with an HTTP 400.
    let authority = format!("https://{}/{TENANT}", rig.emulator.local_addr());
    let app = rig
        .builder()
        .authority(authority)
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    let Error::Transport(transport) = err.kind() else {
        panic!("expected a transport error, got {err:?}");
    };
    assert_eq!(transport.kind(), TransportErrorKind::Connect);
    let mut root: &dyn std::error::Error = &err;
    let mut depth = 0;
    while let Some(cause) = root.source() {
        root = cause;
        depth += 1;
    }
    assert!(depth >= 2, "the cause is some levels down: {err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains(&root.to_string()),
        "`{shown}` does not show the root cause `{root}`"
    );
}
