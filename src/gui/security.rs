//! What guards the GUI: the token (a header, or the cookie its login page
//! sets), the `Host` check against DNS rebinding, the same-origin and JSON
//! rules for requests that change anything, read-only mode, CORS for one
//! configured origin, and the headers every response carries.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::api::error;
use super::state::AppState;
use crate::auth::Token;

/// The cookie the login page sets.
pub const COOKIE: &str = "fastworker_session";

/// The Content-Security-Policy of every response: this origin only.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The guard's settings.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    token: Option<Token>,
    /// The cookie's value: derived from the token, so that a restart (same
    /// token) keeps a logged-in page logged in.
    session: Option<[u8; 32]>,
    /// `Host` values answered (lowercase); none: any (a wildcard bind).
    hosts: Option<Vec<String>>,
    cors_origin: Option<String>,
    pub read_only: bool,
    metrics_public: bool,
}

impl Guard {
    pub fn new(
        token: Option<Token>,
        hosts: Option<Vec<String>>,
        cors_origin: Option<String>,
        read_only: bool,
        metrics_public: bool,
    ) -> Guard {
        let session = token.as_ref().map(|t| session_of(t.reveal()));
        Guard {
            token,
            session,
            hosts: hosts.map(|h| h.into_iter().map(|h| h.to_lowercase()).collect()),
            cors_origin,
            read_only,
            metrics_public,
        }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The cookie that logs a browser in (none without a token).
    pub fn session_cookie(&self) -> Option<String> {
        self.session.map(|s| hex(&s))
    }

    pub fn token_matches(&self, given: &str) -> bool {
        self.token.as_ref().is_some_and(|t| t.matches(Some(given)))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if token.matches(bearer.map(str::trim)) {
            return true;
        }
        let Some(session) = &self.session else {
            return false;
        };
        cookies(headers, COOKIE).any(|value| {
            let given = Sha256::digest(value.as_bytes());
            let expected = Sha256::digest(hex(session).as_bytes());
            bool::from(given.ct_eq(&expected))
        })
    }

    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_lowercase);
        // A DNS rebinding attack needs a name: an address is always safe.
        host.is_some_and(|h| hosts.contains(&h) || is_ip_literal(&h))
    }

    /// Whether `origin`'s host (and port) is one this GUI answers to: a
    /// reverse proxy passes the browser's `Origin` with its own `Host`.
    fn origin_allowed(&self, authority: &str) -> bool {
        let authority = authority.to_lowercase();
        self.hosts
            .as_ref()
            .is_some_and(|hosts| hosts.contains(&authority))
    }
}

/// Whether a `Host` value is an IP address (with or without a port).
fn is_ip_literal(host: &str) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) => h,
        _ => host,
    };
    bare.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
}

/// The `Host` values (names: an IP address is always answered) a GUI bound
/// at `host:port` answers: that address, the loopback names when it is on
/// loopback or a wildcard, and `extra`; none (any host) for a wildcard
/// address with a token and no `extra` (a rebinding page has no token).
pub fn allowed_hosts(host: &str, port: u16, extra: &[String], token: bool) -> Option<Vec<String>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let wildcard = bare.is_empty() || bare == "0.0.0.0" || bare == "::";
    if wildcard && extra.is_empty() && token {
        return None;
    }
    let mut hosts: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        let name = if name.contains(':') && !name.starts_with('[') {
            format!("[{name}]")
        } else {
            name.to_owned()
        };
        hosts.push(format!("{name}:{port}"));
        if port == 80 {
            hosts.push(name);
        }
    };
    if !wildcard {
        add(bare);
    }
    let loopback = bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || wildcard {
        for name in ["localhost", "127.0.0.1", "::1"] {
            add(name);
        }
    }
    for name in extra.iter().map(|n| n.trim().to_lowercase()) {
        // A name with its port is taken as it is; one without answers
        // with no port (a proxy's 80 or 443) and with the GUI's.
        let has_port = name.rsplit_once(':').is_some_and(|(h, p)| {
            p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
        });
        if !has_port {
            hosts.push(format!("{name}:{port}"));
        }
        hosts.push(name);
    }
    Some(hosts)
}

fn session_of(token: &str) -> [u8; 32] {
    Sha256::digest(format!("fastworker-gui-session\0{token}").as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The values of cookie `name` in the request's `Cookie` headers.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Routes that need no token: the login page and what it shows.
fn open_route(method: &Method, path: &str, metrics_public: bool) -> bool {
    matches!(
        path,
        "/login" | "/logout" | "/login.js" | "/style.css" | "/favicon.svg"
    ) && (*method == Method::GET || *method == Method::POST || path != "/logout")
        || (metrics_public && path == "/metrics")
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a state-changing request comes from this origin (or from no
/// browser at all: a browser always sends `Origin` on a POST).
fn same_origin(headers: &HeaderMap, guard: &Guard) -> bool {
    let cors_origin = guard.cors_origin.as_deref();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        let allowed_cross = cors_origin.is_some_and(|o| {
            headers
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|given| given == o)
        });
        if !allowed_cross {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if cors_origin.is_some_and(|o| o == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    match (authority, host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => true,
        // Behind a proxy: the page's origin is a name given with
        // --gui-allowed-host.
        (Some(a), _) => guard.origin_allowed(a),
        _ => false,
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Every request passes here first.
pub async fn guard(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let guard = &app.guard;
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let headers = request.headers();
    if !guard.host_allowed(headers) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return secure(error(
            StatusCode::FORBIDDEN,
            format!(
                "this GUI does not answer to the host '{}' (a guard against DNS rebinding); if that name is yours, add it with --gui-allowed-host",
                crate::protocol::cut(host, 100)
            ),
        ));
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cors = guard
        .cors_origin
        .as_deref()
        .filter(|o| origin.as_deref() == Some(*o))
        .map(str::to_owned);
    if method == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Some(o) = &cors {
            preflight(response.headers_mut(), o);
        }
        return secure(response);
    }
    if !guard.authorized(headers) && !open_route(&method, &path, guard.metrics_public) {
        let page = method == Method::GET && (path == "/" || path == "/index.html");
        let response = if page {
            (StatusCode::SEE_OTHER, [(header::LOCATION, "login")]).into_response()
        } else {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a token is needed: send `Authorization: Bearer <token>`, or log in on the GUI's login page".to_owned(),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        };
        return secure(with_cors(response, cors.as_deref()));
    }
    if changes_state(&method) {
        if !same_origin(headers, guard) {
            return secure(error(
                StatusCode::FORBIDDEN,
                "a request that changes something must come from the GUI's own page (its Origin is another site)".to_owned(),
            ));
        }
        let form = path == "/login" || path == "/logout";
        if !form {
            if guard.read_only {
                return secure(with_cors(
                    error(
                        StatusCode::FORBIDDEN,
                        "the GUI is read-only (--gui-read-only): no task can be submitted, cancelled, retried or deleted from it".to_owned(),
                    ),
                    cors.as_deref(),
                ));
            }
            let has_body = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|n| n != "0")
                || headers.contains_key(header::TRANSFER_ENCODING);
            if (method == Method::POST || has_body) && !is_json(headers) {
                return secure(with_cors(
                    error(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "send a JSON body, with `Content-Type: application/json` (`{}` when there is nothing to say)".to_owned(),
                    ),
                    cors.as_deref(),
                ));
            }
        }
    }
    let response = next.run(request).await;
    secure(with_cors(response, cors.as_deref()))
}

fn preflight(headers: &mut HeaderMap, origin: &str) {
    if let Ok(o) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, last-event-id"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

fn with_cors(mut response: Response, origin: Option<&str>) -> Response {
    if let Some(o) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The headers every response carries.
fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_answers_to_its_names_and_a_wildcard_to_any() {
        let hosts = allowed_hosts("127.0.0.1", 8080, &[], false).expect("a list");
        for h in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
            assert!(hosts.contains(&h.to_owned()), "{h} in {hosts:?}");
        }
        assert!(!hosts.contains(&"evil.example:8080".to_owned()));
        assert_eq!(allowed_hosts("0.0.0.0", 8080, &[], true), None);
        let insecure = allowed_hosts("0.0.0.0", 8080, &[], false).expect("no token: a list");
        assert!(insecure.contains(&"localhost:8080".to_owned()));
        assert!(is_ip_literal("10.1.2.3:8080") && is_ip_literal("[::1]:8080"));
        assert!(!is_ip_literal("evil.example:8080"));
        let proxied =
            allowed_hosts("0.0.0.0", 8080, &["fw.example.com".to_owned()], true).expect("a list");
        assert!(proxied.contains(&"fw.example.com".to_owned()));
        assert!(proxied.contains(&"fw.example.com:8080".to_owned()));
        let with_port =
            allowed_hosts("127.0.0.1", 8080, &["proxy:443".to_owned()], true).expect("a list");
        assert!(with_port.contains(&"proxy:443".to_owned()));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let token = Token::new("0123456789abcdef0123").expect("token");
        let guard = Guard::new(Some(token), None, None, false, false);
        let cookie = guard.session_cookie().expect("a cookie");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {COOKIE}={cookie}; b=2")).expect("header"),
        );
        assert!(guard.authorized(&headers));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("fastworker_session=00"),
        );
        assert!(!guard.authorized(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef0123"),
        );
        assert!(guard.authorized(&headers));
    }
}
