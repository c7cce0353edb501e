//! Just enough HTTP/1.1 and server-sent events to follow a LaunchDarkly `/all` stream cheaply: the response head
//! (httparse), a chunked, length- or close-delimited body, SSE lines (`event:`, `data:`, comments), and the two
//! payloads the load tool cares about (the flag's version in a `put`, and in a `patch` for that flag).
//!
//! Lines may end in `\n` or `\r\n` (what every LaunchDarkly-compatible server sends); a bare `\r` is not a line end.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

/// A malformed response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The response head does not parse.
    #[error("bad response head: {0}")]
    Head(#[from] httparse::Error),
    /// A `Content-Length` that is not a number.
    #[error("bad Content-Length")]
    ContentLength,
    /// A chunk-size line that is not hexadecimal, or a chunk not followed by CRLF.
    #[error("bad chunked encoding")]
    Chunked,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length: n`.
    Length(u64),
    /// Until the server closes the connection.
    Close,
}

/// A complete response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub status: u16,
    pub body: BodyKind,
    /// Bytes of the buffer taken by the head; the body starts there.
    pub len: usize,
}

/// Parses a response head, `None` while it is incomplete.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, StreamError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or(0);
    let mut body = BodyKind::Close;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value.split(|&b| b == b',').any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked")) {
                body = BodyKind::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") && body != BodyKind::Chunked {
            let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
            body = BodyKind::Length(n.ok_or(StreamError::ContentLength)?);
        }
    }
    Ok(Some(Head { status, body, len }))
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line.
    Size { value: u64, digits: u32, extension: bool },
    /// This many chunk bytes to go.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk.
    Done,
}

/// Turns raw body bytes into payload bytes.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    kind: BodyKind,
    chunk: Chunk,
    left: u64,
}

impl BodyDecoder {
    pub(crate) fn new(kind: BodyKind) -> BodyDecoder {
        let left = if let BodyKind::Length(n) = kind { n } else { 0 };
        BodyDecoder { kind, chunk: Chunk::Size { value: 0, digits: 0, extension: false }, left }
    }

    /// Feeds raw body bytes, calling `out` with each run of payload bytes. `Ok(true)` once the body is complete
    /// (anything after that is ignored).
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) -> Result<bool, StreamError> {
        match self.kind {
            BodyKind::Close => {
                out(input);
                Ok(false)
            }
            BodyKind::Length(_) => {
                let take = input.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
                out(&input[..take]);
                self.left -= take as u64;
                Ok(self.left == 0)
            }
            BodyKind::Chunked => {
                while !input.is_empty() {
                    match &mut self.chunk {
                        Chunk::Size { value, digits, extension } => {
                            let b = input[0];
                            input = &input[1..];
                            match b {
                                b'\n' if *digits == 0 => return Err(StreamError::Chunked),
                                b'\n' if *value == 0 => self.chunk = Chunk::Done,
                                b'\n' => self.chunk = Chunk::Data(*value),
                                b'\r' => {}
                                _ if *extension => {}
                                b';' => *extension = true,
                                b' ' | b'\t' => {}
                                _ => {
                                    let d = (b as char).to_digit(16).ok_or(StreamError::Chunked)?;
                                    if *digits >= 15 {
                                        return Err(StreamError::Chunked);
                                    }
                                    *value = *value * 16 + u64::from(d);
                                    *digits += 1;
                                }
                            }
                        }
                        Chunk::Data(left) => {
                            let take = input.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                            out(&input[..take]);
                            input = &input[take..];
                            *left -= take as u64;
                            if *left == 0 {
                                self.chunk = Chunk::DataEnd;
                            }
                        }
                        Chunk::DataEnd => {
                            let b = input[0];
                            input = &input[1..];
                            match b {
                                b'\r' => {}
                                b'\n' => self.chunk = Chunk::Size { value: 0, digits: 0, extension: false },
                                _ => return Err(StreamError::Chunked),
                            }
                        }
                        Chunk::Done => return Ok(true),
                    }
                }
                Ok(matches!(self.chunk, Chunk::Done))
            }
        }
    }
}

/// Beyond this, a buffer is given back after the event that needed it (a big `put`).
const KEEP_CAPACITY: usize = 16 * 1024;

#[derive(Debug, Default)]
struct Fields {
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

/// Server-sent events parser: feed payload bytes, get `(event name, data)` for each complete event.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    fields: Fields,
}

impl SseParser {
    pub(crate) fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&[u8], &[u8])) {
        while let Some(i) = memchr::memchr(b'\n', input) {
            if self.partial.is_empty() {
                self.fields.line(&input[..i], on_event);
            } else {
                self.partial.extend_from_slice(&input[..i]);
                self.fields.line(&self.partial, on_event);
                self.partial.clear();
                if self.partial.capacity() > KEEP_CAPACITY {
                    self.partial = Vec::new();
                }
            }
            input = &input[i + 1..];
        }
        self.partial.extend_from_slice(input);
    }
}

impl Fields {
    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8], &[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                let name: &[u8] = if self.event.is_empty() { b"message" } else { &self.event };
                on_event(name, &self.data);
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            if self.data.capacity() > KEEP_CAPACITY {
                self.data = Vec::new();
            }
            return;
        }
        if line[0] == b':' {
            return; // a comment (heartbeat)
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            _ => {} // id, retry, unknown fields
        }
    }
}

#[derive(Deserialize)]
struct Versioned {
    version: u64,
}

#[derive(Deserialize)]
struct Put<'a> {
    #[serde(borrow)]
    data: PutData<'a>,
}

#[derive(Deserialize)]
struct PutData<'a> {
    #[serde(borrow, default)]
    flags: HashMap<Cow<'a, str>, Versioned>,
}

#[derive(Deserialize)]
struct Patch<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    data: Versioned,
}

/// The flag's version in a `put` (`None` if the put does not have the flag).
pub(crate) fn put_version(data: &[u8], flag: &str) -> Result<Option<u64>, serde_json::Error> {
    let put: Put<'_> = serde_json::from_slice(data)?;
    Ok(put.data.flags.get(flag).map(|f| f.version))
}

/// The version in a `patch` for the flag whose path is `flag_path` (`/flags/<key>`); `None` for other patches.
/// Patches for other items are recognised without parsing them.
pub(crate) fn patch_version(data: &[u8], flag_path: &str) -> Option<u64> {
    memchr::memmem::find(data, flag_path.as_bytes())?;
    let patch: Patch<'_> = serde_json::from_slice(data).ok()?;
    (patch.path == flag_path).then_some(patch.data.version)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn events_of(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            parser.feed(c, &mut |n, d| {
                out.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(d).into_owned()))
            });
        }
        out
    }

    #[test]
    fn sse_events_split_anywhere() {
        let text =
            b": hello\r\n\r\nevent: put\r\ndata: {\"a\":1}\r\n\r\nevent:patch\ndata: x\ndata:y\n\ndata: plain\n\n";
        let whole = events_of(&[text]);
        let expected = vec![
            ("put".to_owned(), "{\"a\":1}".to_owned()),
            ("patch".to_owned(), "x\ny".to_owned()),
            ("message".to_owned(), "plain".to_owned()),
        ];
        assert_eq!(whole, expected);
        for split in 0..text.len() {
            assert_eq!(events_of(&[&text[..split], &text[split..]]), expected, "split at {split}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(events_of(&bytes), expected);
    }

    #[test]
    fn chunked_body_decodes_across_reads() {
        let body = b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = BodyDecoder::new(BodyKind::Chunked);
            let mut out = Vec::new();
            let a = d.feed(&body[..split], &mut |b| out.extend_from_slice(b)).unwrap();
            let b = d.feed(&body[split..], &mut |b| out.extend_from_slice(b)).unwrap();
            assert_eq!(out, b"hello world!", "split at {split}");
            assert!(b, "split at {split}");
            assert!(!a || split >= body.len() - 2, "done early at {split}");
        }
        let mut d = BodyDecoder::new(BodyKind::Chunked);
        assert!(d.feed(b"zz\r\n", &mut |_| {}).is_err());
        let mut d = BodyDecoder::new(BodyKind::Chunked);
        assert!(d.feed(b"2\r\nabX", &mut |_| {}).is_err());
    }

    #[test]
    fn length_body_ends() {
        let mut d = BodyDecoder::new(BodyKind::Length(4));
        let mut out = Vec::new();
        assert!(!d.feed(b"ab", &mut |b| out.extend_from_slice(b)).unwrap());
        assert!(d.feed(b"cdef", &mut |b| out.extend_from_slice(b)).unwrap());
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn heads() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        let h = parse_head(head).unwrap().unwrap();
        assert_eq!(h, Head { status: 200, body: BodyKind::Chunked, len: head.len() - 3 });
        assert_eq!(parse_head(&head[..20]).unwrap(), None);
        let h = parse_head(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 12\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.status, h.body), (401, BodyKind::Length(12)));
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.body, BodyKind::Close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn payload_versions() {
        let put = br#"{"path":"/","data":{"flags":{"a":{"key":"a","version":3,"on":true,"rules":[{"x":[1]}]},"b":{"version":9}},"segments":{}}}"#;
        assert_eq!(put_version(put, "a").unwrap(), Some(3));
        assert_eq!(put_version(put, "c").unwrap(), None);
        assert!(put_version(b"{", "a").is_err());
        let patch = br#"{"path":"/flags/a","data":{"key":"a","version":4,"variations":[true,false]}}"#;
        assert_eq!(patch_version(patch, "/flags/a"), Some(4));
        assert_eq!(patch_version(patch, "/flags/b"), None);
        let other = br#"{"path":"/flags/ab","data":{"key":"ab","version":4}}"#;
        assert_eq!(patch_version(other, "/flags/a"), None);
    }
}
