//! Reading server events fast: one pass over a flat JSON object, keeping only the fields
//! the load generator records, hashing `text` as it goes.
//!
//! The load generator must cost less per delivery than the server it measures, so this
//! does not build a `serde_json::Value` or allocate: strings are borrowed from the frame
//! unless they contain escapes (then unescaped into an owned string — rare, as neither
//! our texts nor names need escaping). Field order does not matter and unknown fields
//! are skipped, so any server speaking the protocol is read correctly; a property test
//! checks it against `serde_json` on generated events.

use std::borrow::Cow;

use lockstep_protocol::record::{self, text_hash_bytes};

use crate::schedule::intended_us_of;

/// Which event a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Other,
    Welcome,
    Joined,
    Message,
    Ack,
    Error,
    Left,
    Pong,
    Typing,
    Read,
    Presence,
    History,
}

/// The fields of a server event the load generator uses. Absent fields are empty/0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event<'a> {
    pub kind: Kind,
    pub room: Cow<'a, str>,
    pub seq: u64,
    pub id: Option<Cow<'a, str>>,
    pub from: Cow<'a, str>,
    pub text_hash: u64,
    /// The send time our own texts start with (`t<us>;`), if this text has one.
    pub intended_us: Option<u64>,
    pub ts: u64,
    pub epoch: Cow<'a, str>,
    pub head: u64,
    pub first: u64,
    pub reset: bool,
    pub dup: bool,
    pub code: Cow<'a, str>,
    pub retry_after_ms: Option<u64>,
    pub heartbeat_ms: u64,
}

impl Event<'_> {
    /// This `message` as a recording event of (`client`, `conn`) at `t_us`.
    pub fn recorded_message(&self, t_us: u64, client: u32, conn: u32) -> record::Event<'_> {
        record::Event::Message {
            t_us,
            client,
            conn,
            room: &self.room,
            seq: self.seq,
            id: self.id.as_deref().unwrap_or(""),
            from: &self.from,
            text_hash: self.text_hash,
            ts: self.ts,
        }
    }

    /// This `joined` as a recording event of (`client`, `conn`) at `t_us`.
    pub fn recorded_joined(&self, t_us: u64, client: u32, conn: u32) -> record::Event<'_> {
        record::Event::Joined {
            t_us,
            client,
            conn,
            room: &self.room,
            epoch: &self.epoch,
            head: self.head,
            first: self.first,
            reset: self.reset,
        }
    }
}

/// Why a frame could not be read as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed event JSON at byte {at}: {what}")]
pub struct ParseError {
    pub at: usize,
    pub what: &'static str,
}

/// A string as found: plain bytes, or escaped from `start` (cursor at the backslash).
enum Raw<'a> {
    Plain(&'a [u8]),
    Escaped(usize),
}

struct P<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> P<'a> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError { at: self.i, what }
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), ParseError> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// A string at the cursor, as UTF-8 text.
    fn string(&mut self) -> Result<Cow<'a, str>, ParseError> {
        match self.raw_string()? {
            Raw::Plain(b) => std::str::from_utf8(b)
                .map(Cow::Borrowed)
                .map_err(|_| self.err("string is not UTF-8")),
            Raw::Escaped(start) => self.string_escaped(start),
        }
    }

    /// A string at the cursor without UTF-8 validation when it has no escapes (keys and
    /// texts that are only compared or hashed).
    fn raw_string(&mut self) -> Result<Raw<'a>, ParseError> {
        self.ws();
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string"));
        }
        self.i += 1;
        let start = self.i;
        match memchr::memchr2(b'"', b'\\', &self.b[self.i..]) {
            None => Err(self.err("unterminated string")),
            Some(n) if self.b[self.i + n] == b'"' => {
                self.i += n + 1;
                Ok(Raw::Plain(&self.b[start..start + n]))
            }
            Some(n) => {
                self.i += n;
                Ok(Raw::Escaped(start))
            }
        }
    }

    fn string_escaped(&mut self, start: usize) -> Result<Cow<'a, str>, ParseError> {
        let mut out = Vec::with_capacity(self.i - start + 16);
        out.extend_from_slice(&self.b[start..self.i]);
        loop {
            match self.b.get(self.i).copied() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out)
                        .map(Cow::Owned)
                        .map_err(|_| self.err("string is not UTF-8"));
                }
                Some(b'\\') => {
                    let e = self
                        .b
                        .get(self.i + 1)
                        .copied()
                        .ok_or(self.err("bad escape"))?;
                    self.i += 2;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.b.get(self.i) != Some(&b'\\')
                                    || self.b.get(self.i + 1) != Some(&b'u')
                                {
                                    return Err(self.err("lone surrogate"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("bad surrogate pair"));
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            let ch = char::from_u32(cp).ok_or(self.err("bad \\u escape"))?;
                            let mut tmp = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.err("control character in string")),
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .ok_or(self.err("short \\u escape"))?;
        let s = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(s, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn u64(&mut self) -> Result<u64, ParseError> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c) = self.peek() {
            if !c.is_ascii_digit() {
                break;
            }
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or(self.err("number over u64"))?;
            self.i += 1;
        }
        if self.i == start {
            return Err(self.err("expected an unsigned integer"));
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(self.err("expected an integer"));
        }
        Ok(v)
    }

    fn bool(&mut self) -> Result<bool, ParseError> {
        self.ws();
        if self.b[self.i..].starts_with(b"true") {
            self.i += 4;
            Ok(true)
        } else if self.b[self.i..].starts_with(b"false") {
            self.i += 5;
            Ok(false)
        } else {
            Err(self.err("expected true or false"))
        }
    }

    /// Skips any JSON value.
    fn skip(&mut self) -> Result<(), ParseError> {
        self.ws();
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{') | Some(b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated value")),
                        Some(b'"') => {
                            self.skip_string()?;
                            continue;
                        }
                        Some(b'{') | Some(b'[') => depth += 1,
                        Some(b'}') | Some(b']') => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            Some(_) => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    Err(self.err("expected a value"))
                } else {
                    Ok(())
                }
            }
            None => Err(self.err("expected a value")),
        }
    }

    fn skip_string(&mut self) -> Result<(), ParseError> {
        match self.raw_string()? {
            Raw::Plain(_) => Ok(()),
            Raw::Escaped(start) => self.string_escaped(start).map(|_| ()),
        }
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, ParseError> {
        self.ws();
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            Ok(None)
        } else {
            self.u64().map(Some)
        }
    }
}

fn kind_of(ty: &str) -> Kind {
    match ty {
        "message" => Kind::Message,
        "ack" => Kind::Ack,
        "joined" => Kind::Joined,
        "error" => Kind::Error,
        "welcome" => Kind::Welcome,
        "left" => Kind::Left,
        "pong" => Kind::Pong,
        "typing" => Kind::Typing,
        "read" => Kind::Read,
        "presence" => Kind::Presence,
        "history" => Kind::History,
        _ => Kind::Other,
    }
}

/// Reads `message` events laid out the way Lockstep's server writes them
/// (`type, room, seq, id, from, text, ts`, no escapes in the names) in one straight pass;
/// `None` means "not in that shape" and the general parser takes over, so other servers
/// (or escaped strings) are still read correctly, only more slowly.
fn fast_message(f: &[u8]) -> Option<Event<'_>> {
    struct C<'a> {
        b: &'a [u8],
        i: usize,
    }
    impl<'a> C<'a> {
        fn lit(&mut self, l: &[u8]) -> Option<()> {
            if self.b.get(self.i..self.i + l.len())? == l {
                self.i += l.len();
                Some(())
            } else {
                None
            }
        }
        /// Bytes up to the closing quote, which must not be preceded by an escape.
        fn raw(&mut self) -> Option<&'a [u8]> {
            let n = memchr::memchr2(b'"', b'\\', &self.b[self.i..])?;
            if self.b[self.i + n] != b'"' {
                return None;
            }
            let s = &self.b[self.i..self.i + n];
            self.i += n + 1;
            Some(s)
        }
        fn str(&mut self) -> Option<&'a str> {
            std::str::from_utf8(self.raw()?).ok()
        }
        fn num(&mut self) -> Option<u64> {
            let start = self.i;
            let mut v: u64 = 0;
            while let Some(&c) = self.b.get(self.i) {
                if !c.is_ascii_digit() {
                    break;
                }
                v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                self.i += 1;
            }
            (self.i > start).then_some(v)
        }
    }
    let mut c = C { b: f, i: 0 };
    c.lit(br#"{"type":"message","room":""#)?;
    let room = c.str()?;
    c.lit(br#","seq":"#)?;
    let seq = c.num()?;
    c.lit(br#","id":""#)?;
    let id = c.str()?;
    c.lit(br#","from":""#)?;
    let from = c.str()?;
    c.lit(br#","text":""#)?;
    let text = c.raw()?;
    c.lit(br#","ts":"#)?;
    let ts = c.num()?;
    c.lit(b"}")?;
    if c.i != f.len() {
        return None;
    }
    Some(Event {
        kind: Kind::Message,
        room: Cow::Borrowed(room),
        seq,
        id: Some(Cow::Borrowed(id)),
        from: Cow::Borrowed(from),
        text_hash: text_hash_bytes(text),
        intended_us: intended_us_of(text),
        ts,
        ..Event::default()
    })
}

/// Parses one server event.
pub fn parse(frame: &[u8]) -> Result<Event<'_>, ParseError> {
    if let Some(ev) = fast_message(frame) {
        return Ok(ev);
    }
    let mut p = P { b: frame, i: 0 };
    let mut ev = Event::default();
    p.expect(b'{', "expected an object")?;
    p.ws();
    if p.peek() == Some(b'}') {
        return Ok(ev);
    }
    loop {
        let key = match p.raw_string()? {
            Raw::Plain(k) => Cow::Borrowed(k),
            Raw::Escaped(start) => Cow::Owned(p.string_escaped(start)?.into_owned().into_bytes()),
        };
        p.expect(b':', "expected ':'")?;
        match key.as_ref() {
            b"type" => ev.kind = kind_of(&p.string()?),
            b"room" => ev.room = p.string()?,
            b"seq" => ev.seq = p.u64()?,
            b"id" => {
                p.ws();
                if p.b[p.i..].starts_with(b"null") {
                    p.i += 4;
                } else {
                    ev.id = Some(p.string()?);
                }
            }
            b"from" => ev.from = p.string()?,
            b"text" => {
                // Only hashed: plain bytes need no UTF-8 check (a server sending invalid
                // UTF-8 produces a different hash, which the checker reports).
                let bytes: Cow<'_, [u8]> = match p.raw_string()? {
                    Raw::Plain(b) => Cow::Borrowed(b),
                    Raw::Escaped(start) => {
                        Cow::Owned(p.string_escaped(start)?.into_owned().into_bytes())
                    }
                };
                ev.text_hash = text_hash_bytes(&bytes);
                ev.intended_us = intended_us_of(&bytes);
            }
            b"ts" => ev.ts = p.u64()?,
            b"epoch" => ev.epoch = p.string()?,
            b"head" => ev.head = p.u64()?,
            b"first" => ev.first = p.u64()?,
            b"reset" => ev.reset = p.bool()?,
            b"dup" => ev.dup = p.bool()?,
            b"code" => ev.code = p.string()?,
            b"retry_after_ms" => ev.retry_after_ms = p.opt_u64()?,
            b"heartbeat_ms" => ev.heartbeat_ms = p.u64()?,
            _ => p.skip()?,
        }
        p.ws();
        match p.peek() {
            Some(b',') => p.i += 1,
            Some(b'}') => {
                p.i += 1;
                break;
            }
            _ => return Err(p.err("expected ',' or '}'")),
        }
    }
    p.ws();
    if p.i != frame.len() {
        return Err(p.err("trailing bytes after the object"));
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_message() {
        let f = br#"{"type":"message","room":"r-1","seq":58,"id":"c1-2","from":"u1","text":"t42;c1-2;xyz","ts":1710600000123}"#;
        let e = parse(f).unwrap();
        assert_eq!(e.kind, Kind::Message);
        assert_eq!((e.room.as_ref(), e.seq, e.ts), ("r-1", 58, 1710600000123));
        assert_eq!(e.id.as_deref(), Some("c1-2"));
        assert_eq!(
            e.text_hash,
            lockstep_protocol::record::text_hash("t42;c1-2;xyz")
        );
        assert_eq!(e.intended_us, Some(42));
        assert!(matches!(e.room, Cow::Borrowed(_)));
    }

    #[test]
    fn any_field_order_escapes_and_unknown_fields() {
        let f = br#" { "ts" : 5 , "text":"a\"b\\n\u00e9\ud83d\ude00", "extra":{"x":[1,{"y":"}"}]}, "seq":3, "type":"message", "room":"r", "id":"i\/d", "from":"u" } "#;
        let e = parse(f).unwrap();
        assert_eq!(e.kind, Kind::Message);
        assert_eq!(
            e.text_hash,
            lockstep_protocol::record::text_hash("a\"b\\né😀")
        );
        assert_eq!(e.id.as_deref(), Some("i/d"));
        assert_eq!((e.seq, e.ts), (3, 5));
    }

    #[test]
    fn reads_joined_ack_error() {
        let e = parse(br#"{"type":"joined","room":"g","epoch":"e-1","head":57,"first":1,"members":["a","b"],"member_count":2,"reset":true}"#).unwrap();
        assert_eq!(
            (e.kind, e.head, e.first, e.reset, e.epoch.as_ref()),
            (Kind::Joined, 57, 1, true, "e-1")
        );
        let e = parse(br#"{"type":"ack","room":"g","id":"x","seq":9,"ts":1,"dup":true}"#).unwrap();
        assert_eq!((e.kind, e.seq, e.dup), (Kind::Ack, 9, true));
        let e = parse(br#"{"type":"error","code":"rate_limited","message":"m","id":"x","retry_after_ms":250}"#).unwrap();
        assert_eq!(
            (e.kind, e.code.as_ref(), e.retry_after_ms),
            (Kind::Error, "rate_limited", Some(250))
        );
    }

    #[test]
    fn fast_and_general_paths_agree() {
        let f = br#"{"type":"message","room":"r-1","seq":58,"id":"c1-2","from":"u1","text":"t42;c1-2;xyz","ts":1710600000123}"#;
        let fast = fast_message(f).expect("canonical layout takes the fast path");
        let mut spaced = f.to_vec();
        spaced.insert(1, b' ');
        assert!(fast_message(&spaced).is_none());
        assert_eq!(parse(&spaced).unwrap(), fast);
        // An escaped text leaves the fast path and still reads the same.
        let esc =
            br#"{"type":"message","room":"r","seq":1,"id":"i","from":"u","text":"a\nb","ts":2}"#;
        assert!(fast_message(esc).is_none());
        assert_eq!(
            parse(esc).unwrap().text_hash,
            lockstep_protocol::record::text_hash("a\nb")
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"[1]",
            br#"{"type":}"#,
            br#"{"seq":-1}"#,
            br#"{"a":"\q"}"#,
            br#"{"a":1}x"#,
            b"{\"room\":\"\xff\"}",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
