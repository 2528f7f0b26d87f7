//! The response body: a whole buffer, or chunks arriving from a scrape in progress. A
//! streamed body that stops without its end marker (the scrape failed or panicked
//! midway) ends in an error, so that the connection is aborted and the client records a
//! failed scrape instead of a short one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// What a scrape sends to its response body.
#[derive(Debug)]
pub enum Chunk {
    /// The next bytes.
    Data(Bytes),
    /// The scrape is complete: the body ends cleanly after this.
    End,
}

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// All of it at once (`None` once sent).
    Full(Option<Bytes>),
    /// Chunks from a scrape; `true` once its end marker has arrived.
    Stream(mpsc::Receiver<Chunk>, bool),
}

impl Body {
    /// A whole body.
    pub fn full(bytes: Bytes) -> Body {
        Body::Full(Some(bytes))
    }

    /// No body.
    pub fn empty() -> Body {
        Body::Full(None)
    }

    /// A streamed body.
    pub fn stream(rx: mpsc::Receiver<Chunk>) -> Body {
        Body::Stream(rx, false)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(_, true) => Poll::Ready(None),
            Body::Stream(rx, ended) => match rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Chunk::Data(c))) => Poll::Ready(Some(Ok(Frame::data(c)))),
                Poll::Ready(Some(Chunk::End)) => {
                    *ended = true;
                    Poll::Ready(None)
                }
                Poll::Ready(None) => {
                    *ended = true;
                    Poll::Ready(Some(Err(io::Error::other("the scrape failed before it was complete"))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None) | Body::Stream(_, true))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) | Body::Stream(_, true) => SizeHint::with_exact(0),
            Body::Stream(..) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_stream_without_its_end_marker_is_an_error() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Chunk::Data(Bytes::from_static(b"partial"))).await.unwrap();
        drop(tx);
        let err = Body::stream(rx).collect().await.unwrap_err();
        assert!(err.to_string().contains("before it was complete"));
    }

    #[tokio::test]
    async fn a_stream_with_its_end_marker_is_whole() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Chunk::Data(Bytes::from_static(b"all"))).await.unwrap();
        tx.send(Chunk::End).await.unwrap();
        drop(tx);
        assert_eq!(Body::stream(rx).collect().await.unwrap().to_bytes(), Bytes::from_static(b"all"));
    }
}
