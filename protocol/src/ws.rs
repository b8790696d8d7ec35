//! RFC 6455 WebSocket framing, for both ends.
//!
//! Why our own framing instead of tungstenite's: a server→client frame is unmasked, so
//! the complete frame (header + JSON) of a broadcast is the same bytes for every
//! recipient. Encoding it once and copying those bytes into each connection's write
//! buffer, then flushing a whole batch with one `write`, is what makes fan-out cheap;
//! tungstenite re-frames every message per connection and keeps two 128 KiB buffers per
//! socket. The decoder works in place on the caller's buffer and allocates only to
//! reassemble a fragmented message.
//!
//! Scope: no extensions (permessage-deflate is never negotiated, so RSV bits must be 0),
//! no subprotocols.

use bytes::Bytes;
use sha1::{Digest, Sha1};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Longest frame header: 2 bytes + 8 bytes of length + 4 bytes of mask.
pub const HEADER_BYTES_MAX: usize = 14;
/// Largest payload a control frame may carry (RFC 6455 §5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// A framing violation. Either is fatal to the connection (the RFC says to fail it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("websocket message of {len} bytes is over the {max}-byte limit")]
    TooBig { len: u64, max: usize },
}

impl WsError {
    /// The close code to send when failing the connection for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => crate::event::close_code::PROTOCOL_ERROR,
            WsError::TooBig { .. } => crate::event::close_code::TOO_BIG,
        }
    }
}

/// One complete message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close { code: Option<u16>, reason: &'a [u8] },
}

/// What [`Decoder::decode`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not a whole frame yet: the buffer must hold at least this many bytes.
    NeedMore(usize),
    /// A fragment was consumed (this many bytes); the message is not complete yet.
    Fragment(usize),
    /// A complete message or control frame, and how many bytes it took.
    Frame(Frame<'a>, usize),
}

/// Which end of the connection is decoding. Client frames must be masked and server
/// frames must not be (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decoding what a client sent.
    Server,
    /// Decoding what a server sent.
    Client,
}

/// Incremental frame decoder; reassembles fragmented messages up to a size limit.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    message_bytes_max: usize,
    frag_opcode: Option<u8>,
    frag: Vec<u8>,
    frag_done: bool,
}

impl Decoder {
    /// `message_bytes_max` bounds a frame's payload and a reassembled message alike; above
    /// it the decoder fails with [`WsError::TooBig`] before buffering the payload.
    pub fn new(role: Role, message_bytes_max: usize) -> Self {
        Self {
            role,
            message_bytes_max,
            frag_opcode: None,
            frag: Vec::new(),
            frag_done: false,
        }
    }

    /// True while a fragmented message is partly received.
    pub fn in_fragment(&self) -> bool {
        self.frag_opcode.is_some() && !self.frag_done
    }

    /// Decodes the frame at the front of `buf`, unmasking it in place.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Decoded<'a>, WsError> {
        if self.frag_done {
            self.frag_done = false;
            self.frag_opcode = None;
            self.frag.clear();
            if self.frag.capacity() > 64 * 1024 {
                self.frag = Vec::new();
            }
        }
        if buf.len() < 2 {
            return Ok(Decoded::NeedMore(2));
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol(
                "reserved bits set without a negotiated extension",
            ));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(WsError::Protocol("client frame is not masked")),
            (Role::Client, true) => return Err(WsError::Protocol("server frame is masked")),
            _ => {}
        }
        let len7 = (b1 & 0x7f) as usize;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask_len = if masked { 4 } else { 0 };
        let header = 2 + ext + mask_len;
        if buf.len() < header {
            return Ok(Decoded::NeedMore(header));
        }
        let payload_len: u64 = match len7 {
            126 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
            127 => {
                let v = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                if v >> 63 != 0 {
                    return Err(WsError::Protocol("payload length has its top bit set"));
                }
                v
            }
            n => n as u64,
        };
        let is_control = opcode & 0x8 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(WsError::Protocol("unknown opcode")),
        }
        if is_control {
            if !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if payload_len > CONTROL_PAYLOAD_BYTES_MAX as u64 {
                return Err(WsError::Protocol("control frame payload over 125 bytes"));
            }
        } else {
            let so_far = if opcode == OP_CONTINUATION {
                self.frag.len() as u64
            } else {
                0
            };
            let total = so_far.saturating_add(payload_len);
            if total > self.message_bytes_max as u64 {
                return Err(WsError::TooBig {
                    len: total,
                    max: self.message_bytes_max,
                });
            }
        }
        let frame_len = header + payload_len as usize;
        if buf.len() < frame_len {
            return Ok(Decoded::NeedMore(frame_len));
        }
        let (head, rest) = buf.split_at_mut(header);
        let payload = &mut rest[..payload_len as usize];
        if masked {
            let mask: [u8; 4] = head[header - 4..header].try_into().expect("4 bytes");
            apply_mask(payload, mask);
        }
        let payload: &'a [u8] = payload;
        let frame = match opcode {
            OP_TEXT | OP_BINARY => {
                if self.frag_opcode.is_some() {
                    return Err(WsError::Protocol(
                        "new data frame while a fragmented message is open",
                    ));
                }
                if !fin {
                    self.frag_opcode = Some(opcode);
                    self.frag.extend_from_slice(payload);
                    return Ok(Decoded::Fragment(frame_len));
                }
                if opcode == OP_TEXT {
                    Frame::Text(payload)
                } else {
                    Frame::Binary(payload)
                }
            }
            OP_CONTINUATION => {
                let Some(op) = self.frag_opcode else {
                    return Err(WsError::Protocol(
                        "continuation frame with nothing to continue",
                    ));
                };
                self.frag.extend_from_slice(payload);
                if !fin {
                    return Ok(Decoded::Fragment(frame_len));
                }
                self.frag_done = true;
                if op == OP_TEXT {
                    Frame::Text(&self.frag)
                } else {
                    Frame::Binary(&self.frag)
                }
            }
            OP_CLOSE => match payload.len() {
                0 => Frame::Close {
                    code: None,
                    reason: &[],
                },
                1 => return Err(WsError::Protocol("close frame with a 1-byte payload")),
                _ => Frame::Close {
                    code: Some(u16::from_be_bytes([payload[0], payload[1]])),
                    reason: &payload[2..],
                },
            },
            OP_PING => Frame::Ping(payload),
            _ => Frame::Pong(payload),
        };
        Ok(Decoded::Frame(frame, frame_len))
    }
}

/// XORs `buf` with the 4-byte `mask`, 8 bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m = [
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ];
    let m64 = u64::from_ne_bytes(m);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // Whole 8-byte chunks keep the mask phase at 0, so the tail starts at mask[0].
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Size of the header for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let ext = if len < 126 {
        0
    } else if len <= u16::MAX as usize {
        2
    } else {
        8
    };
    2 + ext + if masked { 4 } else { 0 }
}

fn header_bytes(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; HEADER_BYTES_MAX], usize) {
    let mut h = [0u8; HEADER_BYTES_MAX];
    h[0] = 0x80 | opcode;
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = 2;
    if len < 126 {
        h[1] = mbit | len as u8;
    } else if len <= u16::MAX as usize {
        h[1] = mbit | 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        n = 4;
    } else {
        h[1] = mbit | 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        n = 10;
    }
    if let Some(m) = mask {
        h[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    (h, n)
}

/// Appends one complete (FIN) frame to `out`, masking it when `mask` is given.
pub fn append_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    let (h, n) = header_bytes(opcode, payload.len(), mask);
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
}

/// Appends one complete frame whose payload `write` produces (e.g. JSON straight from
/// serde), without an intermediate buffer. Room for the longest header is reserved
/// first and the unused part closed up afterwards.
pub fn append_frame_with(
    out: &mut Vec<u8>,
    opcode: u8,
    mask: Option<[u8; 4]>,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES_MAX]);
    write(out);
    let payload_start = start + HEADER_BYTES_MAX;
    let len = out.len() - payload_start;
    let (h, n) = header_bytes(opcode, len, mask);
    let gap = HEADER_BYTES_MAX - n;
    out[start + gap..payload_start].copy_from_slice(&h[..n]);
    if gap > 0 {
        out.drain(start..start + gap);
    }
    if let Some(m) = mask {
        apply_mask(&mut out[start + n..], m);
    }
}

/// One complete frame as shareable bytes, payload produced by `write`.
pub fn frame_bytes_with(
    opcode: u8,
    mask: Option<[u8; 4]>,
    write: impl FnOnce(&mut Vec<u8>),
) -> Bytes {
    let mut out = Vec::with_capacity(256);
    append_frame_with(&mut out, opcode, mask, write);
    Bytes::from(out)
}

/// The payload of a close frame: the code, then a reason cut to fit in 125 bytes.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(CONTROL_PAYLOAD_BYTES_MAX - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// Whether a close frame may carry `code` (RFC 6455 §7.4): the defined codes except the
/// three reserved for local use only (1005, 1006, 1015), plus 3000-4999.
pub fn close_code_is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut Decoder, mut buf: Vec<u8>) -> Vec<String> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match dec.decode(&mut buf[pos..]).unwrap() {
                Decoded::NeedMore(_) => break,
                Decoded::Fragment(n) => pos += n,
                Decoded::Frame(f, n) => {
                    out.push(format!("{f:?}"));
                    pos += n;
                }
            }
        }
        out
    }

    #[test]
    fn rfc_examples() {
        // RFC 6455 §5.7: a masked "Hello" from a client.
        let mut dec = Decoder::new(Role::Server, 1024);
        let mut buf = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Decoded::Frame(Frame::Text(b"Hello"), 11)
        );
        // Fragmented unmasked "Hel" + "lo" from a server.
        let mut dec = Decoder::new(Role::Client, 1024);
        let buf = vec![0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        assert_eq!(
            decode_all(&mut dec, buf),
            vec![format!("{:?}", Frame::Text(b"Hello"))]
        );
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn roundtrip_sizes_and_masks() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                append_frame(&mut out, OP_BINARY, &payload, mask);
                let mut out2 = Vec::new();
                append_frame_with(&mut out2, OP_BINARY, mask, |b| {
                    b.extend_from_slice(&payload)
                });
                assert_eq!(out, out2, "len {len}");
                assert_eq!(out.len(), header_len(len, mask.is_some()) + len);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let mut dec = Decoder::new(role, 1 << 20);
                match dec.decode(&mut out).unwrap() {
                    Decoded::Frame(Frame::Binary(p), n) => {
                        assert_eq!(p, &payload[..]);
                        assert_eq!(n, header_len(len, mask.is_some()) + len);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn violations() {
        let mut dec = Decoder::new(Role::Server, 16);
        // Unmasked client frame.
        assert!(matches!(
            dec.decode(&mut [0x81, 0x00]),
            Err(WsError::Protocol(_))
        ));
        // Too big, refused from the header alone.
        let mut big = vec![0x81, 0x80 | 126, 0x10, 0x00, 0, 0, 0, 0];
        assert_eq!(
            dec.decode(&mut big),
            Err(WsError::TooBig { len: 4096, max: 16 })
        );
        // RSV bit.
        assert!(dec.decode(&mut [0xC1, 0x80, 0, 0, 0, 0]).is_err());
        // Continuation without start.
        assert!(dec.decode(&mut [0x80, 0x80, 0, 0, 0, 0]).is_err());
        // Fragmented ping.
        assert!(dec.decode(&mut [0x09, 0x80, 0, 0, 0, 0]).is_err());
        // Close code parsing.
        let mut out = Vec::new();
        append_frame(
            &mut out,
            OP_CLOSE,
            &close_payload(4000, "slow"),
            Some([9, 9, 9, 9]),
        );
        let total = out.len();
        assert_eq!(
            dec.decode(&mut out).unwrap(),
            Decoded::Frame(
                Frame::Close {
                    code: Some(4000),
                    reason: b"slow"
                },
                total
            )
        );
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1008, 1009, 1011, 1012, 3000, 4000, 4999] {
            assert!(close_code_is_valid(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!close_code_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let p = close_payload(1000, &"é".repeat(100));
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
