//! The authorization code flow's loopback redirect (RFC 8252 §7.3): a listener on 127.0.0.1
//! that takes the one redirect carrying the code (or the error), checks its `state`, and
//! answers the browser with a small page.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::util::{EXIT_INTERACTION, Failure, Outcome};

/// The most a browser's request head may take (the query carries the code).
const MAX_HEAD: usize = 16 * 1024;
/// How long one connection may take to send its request (browsers open idle preconnects).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Redirect errors that only the user can fix: exit 3.
const INTERACTION_ERRORS: [&str; 5] = [
    "access_denied",
    "consent_required",
    "interaction_required",
    "login_required",
    "account_selection_required",
];

/// A listener waiting for the identity provider's redirect.
pub struct Loopback {
    listener: TcpListener,
    port: u16,
}

/// What the decisive redirect said (no `Debug`: it holds the code).
enum Redirect {
    Code(String),
    StateMismatch,
    Error { error: String, description: String },
}

impl Loopback {
    /// Listen on 127.0.0.1:`port` (0: a free port).
    pub async fn bind(port: u16) -> Outcome<Loopback> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            Failure::error(format!(
                "cannot listen on 127.0.0.1:{port} for the sign-in redirect: {e} (pick another \
                 --redirect-port, or 0 for a free one)"
            ))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Failure::error(format!("cannot read the redirect listener's port: {e}")))?
            .port();
        Ok(Loopback { listener, port })
    }

    /// The redirect URI to register and send: `http://127.0.0.1:PORT`.
    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Wait (at most `timeout`) for the redirect carrying `state`; returns its code.
    ///
    /// Requests for other paths (a favicon) or without `code`/`error` are answered and
    /// ignored; the first redirect that has either decides, and nothing else is accepted.
    pub async fn wait(self, state: &str, timeout: Duration) -> Outcome<String> {
        let (tx, mut rx) = mpsc::channel::<Redirect>(1);
        let listener = self.listener;
        let expected = state.to_owned();
        let accept = async {
            loop {
                tokio::select! {
                    decided = rx.recv() => return decided,
                    accepted = listener.accept() => {
                        // A failed accept (a client that went away) is not the redirect.
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve(stream, expected.clone(), tx.clone()));
                        }
                    }
                }
            }
        };
        let decided = tokio::time::timeout(timeout, accept).await.map_err(|_| {
            Failure::error(format!(
                "timed out after {}s waiting for the sign-in redirect to {} (finish signing in \
                 sooner, or raise --timeout)",
                timeout.as_secs(),
                self_uri(self.port)
            ))
        })?;
        match decided {
            Some(Redirect::Code(code)) => Ok(code),
            Some(Redirect::StateMismatch) => Err(Failure::error(
                "refused the sign-in redirect: its state does not match this sign-in's (a \
                 forged or stale redirect); run the command again",
            )),
            Some(Redirect::Error { error, description }) => {
                let code = if INTERACTION_ERRORS.contains(&error.as_str()) {
                    EXIT_INTERACTION
                } else {
                    crate::util::EXIT_ERROR
                };
                let description = if description.is_empty() {
                    String::new()
                } else {
                    format!(": {description}")
                };
                Err(Failure {
                    code,
                    message: format!("sign-in failed: {error}{description}"),
                })
            }
            None => Err(Failure::error("the redirect listener stopped")),
        }
    }
}

fn self_uri(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Printable text from the network: no control characters (no terminal escapes), at most
/// `max` characters.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// Answer one connection; report a decisive redirect on `decided`.
async fn serve(mut stream: TcpStream, expected_state: String, decided: mpsc::Sender<Redirect>) {
    let Ok(Some(head)) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let (status, page, redirect) = judge(&head, &expected_state);
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tokenwell</title></head>\
         <body><p>{page}</p></body></html>"
    );
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    if let Some(redirect) = redirect {
        let _ = decided.send(redirect).await;
    }
}

/// The request head (up to the blank line), or `None` when it is too long or cut off.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 2048];
    loop {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(buffer.get(..n)?);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return String::from_utf8(head).ok();
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

/// The status line, the page's text (fixed: nothing from the request is reflected) and
/// the decision, for one request head.
fn judge(head: &str, expected_state: &str) -> (&'static str, &'static str, Option<Redirect>) {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        return ("405 Method Not Allowed", "Method not allowed.", None);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/" {
        return ("404 Not Found", "Not found.", None);
    }
    let mut code = None;
    let mut error = None;
    let mut description = String::new();
    let mut state = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "code" => code = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = value.into_owned(),
            "state" => state = Some(value.into_owned()),
            _ => {}
        }
    }
    if code.is_none() && error.is_none() {
        return ("400 Bad Request", "This is not a sign-in redirect.", None);
    }
    if state.as_deref() != Some(expected_state) {
        return (
            "400 Bad Request",
            "Sign-in refused: this redirect does not belong to the sign-in the terminal \
             started. Run the command again.",
            Some(Redirect::StateMismatch),
        );
    }
    if let Some(error) = error {
        return (
            "200 OK",
            "Sign-in failed; the terminal says why. You can close this tab.",
            Some(Redirect::Error {
                error: printable(&error, 80),
                description: printable(&description, 300),
            }),
        );
    }
    match code.filter(|c| !c.is_empty()) {
        Some(code) => (
            "200 OK",
            "Signed in. You can close this tab and return to the terminal.",
            Some(Redirect::Code(code)),
        ),
        None => ("400 Bad Request", "This is not a sign-in redirect.", None),
    }
}

/// A random `state` (32 bytes, base64url).
pub fn random_state() -> String {
    use base64::Engine as _;
    use rand::Rng as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Open `url` in a browser when one can be found: `$BROWSER` (a list of commands separated
/// by `:` — `;` on Windows — tried in order; in each, `%s` stands for the URL, else it is the
/// last argument), else `xdg-open` (Linux, BSD) or `open` (macOS) on `PATH`. Returns what was
/// started, if anything. Never waits for the browser.
pub fn open_browser(url: &str) -> Option<String> {
    let configured = std::env::var("BROWSER").unwrap_or_default();
    let mut commands = browser_commands(&configured);
    if commands.is_empty() {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else if cfg!(unix) {
            "xdg-open"
        } else {
            return None;
        };
        commands.push((opener.to_owned(), Vec::new()));
    }
    commands
        .into_iter()
        .find_map(|(program, args)| start_browser(program, args, url))
}

/// The commands of a `$BROWSER` value: program and arguments of each, empty entries skipped.
fn browser_commands(value: &str) -> Vec<(String, Vec<String>)> {
    let separator = if cfg!(windows) { ';' } else { ':' };
    value
        .split(separator)
        .filter_map(|command| {
            let mut words = command.split_whitespace().map(str::to_owned);
            let program = words.next()?;
            Some((program, words.collect()))
        })
        .collect()
}

/// Start `program` with `args` and `url` when it can be found; returns its name.
fn start_browser(program: String, mut args: Vec<String>, url: &str) -> Option<String> {
    if !program.contains(std::path::MAIN_SEPARATOR) && !on_path(&program) {
        return None;
    }
    if args.iter().any(|a| a.contains("%s")) {
        args = args.iter().map(|a| a.replace("%s", url)).collect();
    } else {
        args.push(url.to_owned());
    }
    let mut child = std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // Reap it whenever it ends; the sign-in does not wait for it.
    std::thread::spawn(move || child.wait());
    Some(program)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(program);
            candidate.is_file()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_is_a_list_of_commands_tried_in_order() {
        let separator = if cfg!(windows) { ';' } else { ':' };
        let value = format!("w3m{separator}{separator} firefox --new-tab %s {separator}chromium");
        assert_eq!(
            browser_commands(&value),
            vec![
                ("w3m".to_owned(), vec![]),
                (
                    "firefox".to_owned(),
                    vec!["--new-tab".to_owned(), "%s".to_owned()]
                ),
                ("chromium".to_owned(), vec![]),
            ]
        );
        assert!(browser_commands("  ").is_empty());
        // None of these exists: nothing is started.
        let missing = format!("tokenwell-no-such-browser-1{separator}tokenwell-no-such-browser-2");
        assert!(
            browser_commands(&missing)
                .into_iter()
                .find_map(|(program, args)| start_browser(program, args, "http://x/"))
                .is_none()
        );
    }

    #[test]
    fn only_a_redirect_with_the_right_state_decides() {
        let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(
            judge(&get("/?code=abc&state=s1"), "s1").2,
            Some(Redirect::Code(c)) if c == "abc"
        ));
        assert!(matches!(
            judge(&get("/?code=abc&state=s2"), "s1").2,
            Some(Redirect::StateMismatch)
        ));
        assert!(matches!(
            judge(&get("/?code=abc"), "s1").2,
            Some(Redirect::StateMismatch)
        ));
        assert!(judge(&get("/favicon.ico"), "s1").2.is_none());
        assert!(judge(&get("/"), "s1").2.is_none());
        assert!(
            judge("POST /?code=a&state=s1 HTTP/1.1\r\n\r\n", "s1")
                .2
                .is_none()
        );
        assert!(judge("", "s1").2.is_none());
        assert!(judge("\u{0}\u{1}garbage", "s1").2.is_none());
        let Some(Redirect::Error { error, description }) = judge(
            &get("/?error=access_denied&error_description=no%1b%5B31m+way&state=s1"),
            "s1",
        )
        .2
        else {
            panic!("an error redirect")
        };
        assert_eq!(error, "access_denied");
        assert_eq!(description, "no [31m way", "no terminal escapes");
    }

    #[test]
    fn states_are_random() {
        let (a, b) = (random_state(), random_state());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }
}
