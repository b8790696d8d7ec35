//! Validated names: rooms, users, message ids and epochs.
//!
//! Each newtype can only hold a valid value, so code past the decoder never re-checks.
//! Deserialization validates, which is how the decoder reports a precise error
//! ("room: invalid room name ...") instead of a generic one.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MESSAGE_ID_BYTES_MAX, ROOM_NAME_BYTES_MAX, USER_NAME_BYTES_MAX};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes, more than the {max} allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} {value:?} has character {ch:?} at byte {at}; allowed: {allowed}")]
    BadChar {
        kind: &'static str,
        value: String,
        ch: char,
        at: usize,
        allowed: &'static str,
    },
}

fn is_room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

fn is_user_byte(b: u8) -> bool {
    is_room_byte(b) || b == b'@'
}

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: fn(u8) -> bool,
) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if value.len() > max {
        return Err(NameError::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    if let Some(at) = value.bytes().position(|b| !ok(b)) {
        let ch = value[at..].chars().next().unwrap_or('\u{fffd}');
        // Quote at most the first 80 bytes so an error never echoes a huge input.
        let mut shown: String = value.chars().take(80).collect();
        if shown.len() < value.len() {
            shown.push('…');
        }
        return Err(NameError::BadChar {
            kind,
            value: shown,
            ch,
            at,
            allowed,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $validate:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value: String = value.into();
                let validate: fn(&str) -> Result<(), NameError> = $validate;
                validate(&value)?;
                Ok(Self(value.into_boxed_str()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Self::new(s.into_owned()).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A room name: 1..=64 bytes of `[A-Za-z0-9._:-]`.
    RoomName,
    "room name",
    |v| check("room name", v, ROOM_NAME_BYTES_MAX, "[A-Za-z0-9._:-]", is_room_byte)
);

name_type!(
    /// A user name: 1..=64 bytes of `[A-Za-z0-9._:@-]`.
    UserName,
    "user name",
    |v| check("user name", v, USER_NAME_BYTES_MAX, "[A-Za-z0-9._:@-]", is_user_byte)
);

name_type!(
    /// A client-chosen message id, the idempotency key of a `send`: 1..=64 bytes.
    ///
    /// The contract only fixes the length; any UTF-8 is accepted so that clients may use
    /// whatever unique scheme they like (UUID, ULID, ...).
    MessageId,
    "message id",
    |v| {
        if v.is_empty() {
            return Err(NameError::Empty { kind: "message id" });
        }
        if v.len() > MESSAGE_ID_BYTES_MAX {
            return Err(NameError::TooLong {
                kind: "message id",
                len: v.len(),
                max: MESSAGE_ID_BYTES_MAX,
            });
        }
        Ok(())
    }
);

name_type!(
    /// Names one incarnation of a room's history. Opaque to clients; compared for equality.
    Epoch,
    "epoch",
    |v| {
        if v.is_empty() {
            return Err(NameError::Empty { kind: "epoch" });
        }
        if v.len() > 64 {
            return Err(NameError::TooLong {
                kind: "epoch",
                len: v.len(),
                max: 64,
            });
        }
        Ok(())
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomName::new("general").is_ok());
        assert!(RoomName::new("a.b_c:d-E9").is_ok());
        assert!(RoomName::new("x".repeat(64)).is_ok());
        assert_eq!(
            RoomName::new("").unwrap_err(),
            NameError::Empty { kind: "room name" }
        );
        assert!(matches!(
            RoomName::new("x".repeat(65)),
            Err(NameError::TooLong { len: 65, .. })
        ));
        let err = RoomName::new("no spaces").unwrap_err().to_string();
        assert_eq!(
            err,
            "room name \"no spaces\" has character ' ' at byte 2; allowed: [A-Za-z0-9._:-]"
        );
        assert!(RoomName::new("a@b").is_err());
        assert!(UserName::new("a@b").is_ok());
        assert!(RoomName::new("é").is_err());
    }

    #[test]
    fn deserialize_validates() {
        let err = serde_json::from_str::<RoomName>("\"bad room\"").unwrap_err();
        assert!(err.to_string().contains("has character ' '"), "{err}");
        let ok: RoomName = serde_json::from_str("\"good\"").unwrap();
        assert_eq!(ok.as_str(), "good");
    }
}
