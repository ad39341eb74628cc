//! Shared secrets: the token a control plane may require on every request
//! (`--auth-token`), and the one subworkers present to register
//! (`--worker-token`). A [`Token`] never prints its value, and is compared
//! in constant time (SHA-256 of both sides, compared with `subtle`), so
//! neither logs nor timing tell an attacker how close a guess came.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted: 16 characters (`openssl rand -hex 32` gives 64).
pub const MIN_TOKEN: usize = 16;

/// A shared secret.
#[derive(Clone)]
pub struct Token {
    value: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace dropped).
    pub fn new(text: &str) -> Result<Token, String> {
        let value = text.trim();
        if value.len() < MIN_TOKEN {
            return Err(format!(
                "a token must be at least {MIN_TOKEN} characters (this one is {}); make one with `openssl rand -hex 32`",
                value.len()
            ));
        }
        if value.chars().any(char::is_control) {
            return Err("a token cannot contain control characters".to_owned());
        }
        Ok(Token {
            value: value.to_owned(),
            digest: Sha256::digest(value.as_bytes()).into(),
        })
    }

    /// A token read from a file (its first line; the file should be
    /// readable by its owner only).
    pub fn from_file(path: &std::path::Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or_default();
        Token::new(line).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The value, to send it.
    pub fn reveal(&self) -> &str {
        &self.value
    }

    /// Whether `given` is this token, in time that does not depend on how
    /// much of it matches.
    pub fn matches(&self, given: Option<&str>) -> bool {
        let Some(given) = given else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// Who may do what on a control plane: `client` is required on every
/// request when set; `worker` (or else `client`) to register and speak as a
/// subworker.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub client: Option<Token>,
    pub worker: Option<Token>,
}

/// What a request asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Submit, query, cancel, list.
    Client,
    /// Register, poll, report, leave: the management socket.
    Worker,
}

impl Access {
    /// Whether any token is set.
    pub fn is_open(&self) -> bool {
        self.client.is_none() && self.worker.is_none()
    }

    /// The token `need` calls for, if any.
    fn required(&self, need: Need) -> Option<&Token> {
        match need {
            Need::Client => self.client.as_ref(),
            Need::Worker => self.worker.as_ref().or(self.client.as_ref()),
        }
    }

    /// Checks the token a request carried.
    pub fn check(&self, need: Need, given: Option<&str>) -> Result<(), String> {
        match self.required(need) {
            None => Ok(()),
            Some(token) if token.matches(given) => Ok(()),
            Some(_) => Err(match (need, given.is_some()) {
                (Need::Client, false) => "unauthorized: this control plane requires a token (--auth-token, --auth-token-file or FASTWORKER_AUTH_TOKEN)",
                (Need::Client, true) => "unauthorized: wrong token",
                (Need::Worker, false) => "unauthorized: subworkers must present the worker token (--worker-token, or --auth-token when no worker token is set)",
                (Need::Worker, true) => "unauthorized: wrong worker token",
            }
            .to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves_and_never_print() {
        let token = Token::new("  0123456789abcdef0123\n").expect("token");
        assert!(token.matches(Some("0123456789abcdef0123")));
        assert!(!token.matches(Some("0123456789abcdef012")));
        assert!(!token.matches(None));
        assert_eq!(format!("{token:?}"), "Token(…)");
        assert!(Token::new("short").is_err());
        assert!(Token::new("0123456789abcdef\u{1b}").is_err());
    }

    #[test]
    fn workers_fall_back_to_the_client_token() {
        let token = |t: &str| Some(Token::new(t).expect("token"));
        let only_client = Access {
            client: token("client-token-0123456"),
            worker: None,
        };
        assert!(
            only_client
                .check(Need::Worker, Some("client-token-0123456"))
                .is_ok()
        );
        let both = Access {
            client: token("client-token-0123456"),
            worker: token("worker-token-0123456"),
        };
        assert!(
            both.check(Need::Worker, Some("client-token-0123456"))
                .is_err()
        );
        assert!(
            both.check(Need::Worker, Some("worker-token-0123456"))
                .is_ok()
        );
        assert!(
            both.check(Need::Client, Some("worker-token-0123456"))
                .is_err()
        );
        let workers_only = Access {
            client: None,
            worker: token("worker-token-0123456"),
        };
        assert!(workers_only.check(Need::Client, None).is_ok());
        assert!(workers_only.check(Need::Worker, None).is_err());
        assert!(Access::default().check(Need::Worker, None).is_ok());
    }
}
