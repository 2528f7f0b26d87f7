//! A connection wrapper that fails a write the client has taken nothing of for too long
//! (`--web.write-timeout`): a client that sends a request and never reads the answer
//! would otherwise hold its scrape slot, and the scrape's memory, for as long as it stays.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::logging::RateLimit;

/// Counts aborted responses and logs them at most once a minute, as one line per burst.
pub struct StallReport {
    limit: Duration,
    aborted: AtomicU64,
    logged: AtomicU64,
    log_limit: RateLimit,
}

impl StallReport {
    /// A report for `limit`.
    pub fn new(limit: Duration) -> StallReport {
        StallReport {
            limit,
            aborted: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            log_limit: RateLimit::new(Duration::from_secs(60)),
        }
    }

    /// Responses aborted so far.
    pub fn aborted(&self) -> u64 {
        self.aborted.load(Ordering::Relaxed)
    }

    fn record(&self) {
        let total = self.aborted.fetch_add(1, Ordering::Relaxed) + 1;
        if self.log_limit.allow() {
            let since = total - self.logged.swap(total, Ordering::Relaxed);
            log::warn!(
                "aborting responses whose client takes no data for {:?} (--web.write-timeout), which frees their scrape slots and memory: {since} now, {total} since start; more within a minute are counted, not logged",
                self.limit
            );
        }
    }
}

/// `I` with a bound on how long one write may make no progress.
pub struct StallTimeout<I> {
    inner: I,
    report: Arc<StallReport>,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> StallTimeout<I> {
    /// Wraps a connection.
    pub fn new(inner: I, report: Arc<StallReport>) -> Self {
        StallTimeout { inner, report, stalled: None }
    }

    /// Called when the inner write is pending: starts the clock, or fails once it ran out.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.report.limit;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            self.report.record();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no data for {limit:?}"),
            )));
        }
        Poll::Pending
    }

    fn progress<T>(&mut self, result: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StallTimeout<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StallTimeout<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(r, cx)
    }
}
