//! The bearer-token check on every RPC of the coordinator service
//! (docs/architecture.md#authentication). `grpc.health.v1` is served beside the service,
//! outside this check, so probes need no token. Tokens are compared as SHA-256 digests with
//! `subtle`'s constant-time equality, so neither the content nor the length of the expected
//! token leaks through timing; a refusal never repeats what was presented.

use mirrorplay_worker::connect::Token;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// What a refused call is told.
pub const REFUSED: &str = "missing or wrong bearer token: give the coordinator's token with --token-file or $MIRRORPLAY_TOKEN";

/// Admits a call only with `authorization: Bearer TOKEN` (every call when no token is set).
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<[u8; 32]>,
}

impl RequireToken {
    pub fn new(token: Option<&Token>) -> RequireToken {
        RequireToken {
            expected: token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
        }
    }

    /// Whether an `authorization` header value admits the call.
    fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let presented = header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Evaluated whatever the header held, so a missing header costs the same as a wrong one.
        let equal: bool = digest.ct_eq(expected).into();
        equal && !presented.is_empty()
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_encoded_bytes());
        if !self.admits(header) {
            return Err(Status::unauthenticated(REFUSED));
        }
        // The handlers never need the secret.
        request.metadata_mut().remove("authorization");
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_admitted() {
        let token = Token::parse("the-token", "test").unwrap();
        let check = RequireToken::new(Some(&token));
        assert!(check.admits(Some(b"Bearer the-token")));
        for wrong in [
            None,
            Some(&b""[..]),
            Some(b"Bearer "),
            Some(b"Bearer the-token2"),
            Some(b"Bearer the-toke"),
            Some(b"the-token"),
            Some(b"Basic the-token"),
        ] {
            assert!(!check.admits(wrong), "{wrong:?}");
        }
        assert!(RequireToken::new(None).admits(None));
    }

    #[test]
    fn a_refusal_does_not_repeat_the_presented_token() {
        let token = Token::parse("the-token", "test").unwrap();
        let mut check = RequireToken::new(Some(&token));
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer guess-123".parse().unwrap());
        let refused = check.call(request).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(!refused.message().contains("guess-123"));
        assert!(!refused.message().contains("the-token"));
    }
}
