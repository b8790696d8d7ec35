//! Who a connection is: `?user=` when auth is off, an HS256 JWT when it is on.
//!
//! Token claims: `sub` (the user), optional `exp` (seconds since the epoch; a connection
//! is closed with 1008 when it passes), optional `rooms` (room names the user may join;
//! `"*"` means any). A missing, expired or badly signed token is HTTP 401, before any
//! upgrade.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lockstep_protocol::{RoomName, UserName};
use serde::Deserialize;

/// Which rooms an identity may join (and read over HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomAccess {
    All,
    Only(HashSet<String>),
}

impl RoomAccess {
    pub fn allows(&self, room: &RoomName) -> bool {
        match self {
            RoomAccess::All => true,
            RoomAccess::Only(set) => set.contains(room.as_str()),
        }
    }
}

/// An authenticated (or, with auth off, self-declared) user.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserName,
    pub rooms: RoomAccess,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

/// Why a request was not authenticated. Every variant is HTTP 401 (400 for a bad
/// `?user=` with auth off).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid user name in token `sub`: {0}")]
    BadSubject(String),
    #[error("invalid user name: {0}")]
    BadUser(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Verifies tokens with one HS256 secret.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is optional (a token without one never expires), but checked when present.
        validation.required_spec_claims = HashSet::from(["sub".to_owned()]);
        validation.validate_exp = true;
        validation.leeway = 0;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks a token and returns its identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        let user = UserName::new(c.sub).map_err(|e| AuthError::BadSubject(e.to_string()))?;
        let rooms = match c.rooms {
            None => RoomAccess::All,
            Some(list) if list.iter().any(|r| r == "*") => RoomAccess::All,
            Some(list) => RoomAccess::Only(list.into_iter().collect()),
        };
        Ok(Identity {
            user,
            rooms,
            expires_at: c.exp,
        })
    }
}

/// The token in `Authorization: Bearer ...`, else in `?token=`.
pub fn token_from<'a>(
    authorization: Option<&'a str>,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    authorization
        .and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .or(query_token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        crate::clock::now_ms() / 1000
    }

    #[test]
    fn verifies_claims() {
        let a = Auth::new("s3cret");
        let id = a
            .verify(&token(
                "s3cret",
                json!({"sub":"alice","exp": now() + 60, "rooms":["a","b"]}),
            ))
            .unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert!(id.rooms.allows(&RoomName::new("a").unwrap()));
        assert!(!id.rooms.allows(&RoomName::new("c").unwrap()));
        let id = a
            .verify(&token("s3cret", json!({"sub":"bob","rooms":["*"]})))
            .unwrap();
        assert_eq!(id.rooms, RoomAccess::All);
        assert_eq!(id.expires_at, None);
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = Auth::new("s3cret");
        assert!(a.verify(&token("other", json!({"sub":"alice"}))).is_err());
        assert!(
            a.verify(&token("s3cret", json!({"sub":"alice","exp": now() - 10})))
                .is_err()
        );
        assert!(
            a.verify(&token("s3cret", json!({"exp": now() + 10})))
                .is_err()
        );
        assert!(matches!(
            a.verify(&token("s3cret", json!({"sub":"bad name"}))),
            Err(AuthError::BadSubject(_))
        ));
        assert!(a.verify("garbage").is_err());
    }

    #[test]
    fn finds_the_token() {
        assert_eq!(token_from(Some("Bearer abc"), Some("q")), Some("abc"));
        assert_eq!(token_from(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(token_from(Some("Basic xyz"), Some("q")), Some("q"));
        assert_eq!(token_from(None, None), None);
    }
}
