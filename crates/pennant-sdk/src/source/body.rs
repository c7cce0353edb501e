//! A response body as a stream of chunks, with a read timeout that every received byte resets (a heartbeat
//! comment counts), handed on in whole lines.
//!
//! Whole lines matter for speed, not correctness: `eventsource-stream` re-scans an incomplete line from its start
//! each time more bytes arrive, so a large `put` received in many small chunks would cost time quadratic in its
//! size. Chunks are held back until they complete a line, so the parser sees each line once.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

/// Why reading a body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// Nothing arrived for the read timeout.
    #[error("nothing received for {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("reading the response failed: {0}")]
    Http(#[from] reqwest::Error),
}

/// Something that yields body chunks; a trait so that tests can feed chunks without a socket.
pub(crate) trait Chunks: Send + 'static {
    /// The next chunk, or `None` at the end.
    fn next_chunk(&mut self) -> impl std::future::Future<Output = Result<Option<Bytes>, reqwest::Error>> + Send;
}

impl Chunks for reqwest::Response {
    fn next_chunk(&mut self) -> impl std::future::Future<Output = Result<Option<Bytes>, reqwest::Error>> + Send {
        self.chunk()
    }
}

struct State<C> {
    chunks: C,
    read_timeout: Duration,
    /// Bytes after the last line break seen.
    pending: Vec<u8>,
    done: bool,
}

/// The body's bytes, in pieces that end at a line break (except the last), failing after `read_timeout` of silence.
pub(crate) fn lines<C: Chunks>(chunks: C, read_timeout: Duration) -> impl Stream<Item = Result<Bytes, ReadError>> {
    let state = State { chunks, read_timeout, pending: Vec::new(), done: false };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            let chunk = match tokio::time::timeout(s.read_timeout, s.chunks.next_chunk()).await {
                Err(_) => {
                    s.done = true;
                    return Some((Err(ReadError::Timeout(s.read_timeout)), s));
                }
                Ok(Err(e)) => {
                    s.done = true;
                    return Some((Err(ReadError::Http(e)), s));
                }
                Ok(Ok(None)) => {
                    s.done = true;
                    if s.pending.is_empty() {
                        return None;
                    }
                    let rest = Bytes::from(std::mem::take(&mut s.pending));
                    return Some((Ok(rest), s));
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            let Some(end) = memchr::memrchr2(b'\n', b'\r', &chunk) else {
                s.pending.extend_from_slice(&chunk);
                continue;
            };
            let piece = if s.pending.is_empty() {
                chunk.slice(..=end)
            } else {
                let mut piece = std::mem::take(&mut s.pending);
                piece.extend_from_slice(&chunk[..=end]);
                Bytes::from(piece)
            };
            s.pending.extend_from_slice(&chunk[end + 1..]);
            return Some((Ok(piece), s));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use std::collections::VecDeque;

    /// Chunks from a list; `None` in the list means "never answer".
    struct Script(VecDeque<Option<&'static str>>);

    impl Chunks for Script {
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, reqwest::Error> {
            match self.0.pop_front() {
                Some(Some(chunk)) => Ok(Some(Bytes::from_static(chunk.as_bytes()))),
                Some(None) => std::future::pending().await,
                None => Ok(None),
            }
        }
    }

    async fn collect(script: &[Option<&'static str>], timeout: Duration) -> (Vec<String>, Option<ReadError>) {
        let stream = lines(Script(script.iter().copied().collect()), timeout);
        let mut stream = std::pin::pin!(stream);
        let mut pieces = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(piece) => pieces.push(String::from_utf8(piece.to_vec()).unwrap()),
                Err(e) => return (pieces, Some(e)),
            }
        }
        (pieces, None)
    }

    #[tokio::test]
    async fn pieces_end_at_line_breaks_and_the_rest_comes_at_the_end() {
        let script = [Some("event: put\nda"), Some("ta: {\"a\""), Some(":1}\n\nevent"), Some(": x\r"), Some("\ntail")];
        let (pieces, error) = collect(&script, Duration::from_secs(10)).await;
        assert!(error.is_none());
        assert_eq!(pieces, ["event: put\n", "data: {\"a\":1}\n\n", "event: x\r", "\n", "tail"]);
        assert_eq!(pieces.concat(), script.iter().map(|c| c.unwrap()).collect::<String>(), "nothing lost");
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        // The script's chunks are ready at once; then nothing ever comes.
        let (pieces, error) = collect(&[Some(":\n"), Some("partial"), None], Duration::from_millis(50)).await;
        assert_eq!(pieces, [":\n"]);
        assert!(matches!(error, Some(ReadError::Timeout(d)) if d == Duration::from_millis(50)));
    }
}
