//! The bearer token: read from `--token-file` or `$MIRRORPLAY_TOKEN`, sent as
//! `authorization: Bearer TOKEN` on every coordinator call. The token is never formatted into
//! a log line, an error or a `Debug` string, and its header is marked sensitive.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The environment variable a token may come from (when no `--token-file` is given).
pub const TOKEN_ENV: &str = "MIRRORPLAY_TOKEN";

/// Longest token accepted (bytes).
const MAX_TOKEN_LEN: usize = 4096;

/// A shared secret. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// `from` names the file or variable, never the value.
    #[error(
        "the token in {from} is {why}; a token is 1 to 4096 visible ASCII characters (no spaces)"
    )]
    Malformed { from: String, why: &'static str },
}

impl Token {
    /// Checks a token's text (surrounding whitespace, e.g. a file's final newline, removed).
    pub fn parse(text: &str, from: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        let malformed = |why| TokenError::Malformed {
            from: from.to_string(),
            why,
        };
        if text.is_empty() {
            return Err(malformed("empty"));
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(malformed("too long"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed("not visible ASCII"));
        }
        Ok(Token(text.to_string()))
    }

    /// `--token-file` if given, else `$MIRRORPLAY_TOKEN` if set, else no token.
    pub fn resolve(file: Option<&Path>) -> Result<Option<Token>, TokenError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| TokenError::Unreadable {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            return Token::parse(&text, &path.display().to_string()).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(text) => Token::parse(&text, &format!("${TOKEN_ENV}")).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The secret itself, for comparing and sending; never for display.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Adds `authorization: Bearer TOKEN` to every request (nothing without a token).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&Token>) -> Bearer {
        Bearer(token.map(|t| {
            let mut value: MetadataValue<Ascii> = format!("Bearer {}", t.expose())
                .parse()
                .expect("a parsed token is visible ASCII");
            value.set_sensitive(true);
            value
        }))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_trimmed_and_checked_and_never_shown() {
        let t = Token::parse("s3cret-Token_1\n", "f").unwrap();
        assert_eq!(t.expose(), "s3cret-Token_1");
        assert!(!format!("{t:?}").contains("s3cret"));
        for bad in ["", "  \n", "has space", "naïve"] {
            let e = Token::parse(bad, "the file").unwrap_err().to_string();
            assert!(e.contains("the file"), "{e}");
        }
        let e = Token::parse("has space", "f").unwrap_err().to_string();
        assert!(!e.contains("has space"), "{e}");
    }

    #[test]
    fn the_bearer_header_is_sent_and_marked_sensitive() {
        let t = Token::parse("abc", "f").unwrap();
        let r = Bearer::new(Some(&t)).call(Request::new(())).unwrap();
        let v = r.metadata().get("authorization").unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer abc");
        assert!(v.is_sensitive());
        assert!(!format!("{:?}", r.metadata()).contains("abc"));
        let r = Bearer::new(None).call(Request::new(())).unwrap();
        assert!(r.metadata().get("authorization").is_none());
    }
}
