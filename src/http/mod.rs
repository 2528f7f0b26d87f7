//! The HTTP side: routing, the streamed metrics response, and the accept loop with
//! graceful shutdown.

mod auth;
mod body;
mod stall;

use std::convert::Infallible;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub use body::{Body, Chunk};
pub use stall::StallReport;
use stall::StallTimeout;

use crate::config::version_line;
use crate::exporter::Exporter;
use crate::exposition::{accepts_gzip, Encoder, Format};
use crate::logging::RateLimit;
use crate::metrics::CollectorSet;
use crate::webconfig::{cert_has_allowed_san, WebConfig, WebConfigFile};
use auth::Authenticator;

/// How long a client may take to send a request's headers, or to finish a TLS handshake.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted; larger ones are answered 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Requests to this exporter carry no body; a declared one larger than this is refused 413.
const MAX_BODY_BYTES: u64 = 1024;

/// Bytes handed to the connection at a time: big enough to keep syscalls few, small
/// enough that a scrape of any size holds only a few of them.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks buffered between the encoder and a slow client.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What every request handler shares.
pub struct App {
    exporter: Exporter,
    telemetry_path: String,
    scrapes: Option<Arc<Semaphore>>,
    landing: Bytes,
    accept_errors: RateLimit,
    client_errors: RateLimit,
    web: Option<WebConfigFile>,
    no_web: Arc<WebConfig>,
    auth: Authenticator,
    stalls: Arc<StallReport>,
}

impl App {
    /// An app serving `exporter` at `telemetry_path`, at most `max_requests` scrapes at once (0: no limit).
    /// `web` is the `--web.config.file`, when given; a response whose client takes no
    /// data for `write_timeout` is aborted.
    pub fn new(
        exporter: Exporter,
        telemetry_path: String,
        max_requests: usize,
        web: Option<WebConfigFile>,
        write_timeout: Duration,
    ) -> App {
        let landing = landing_page(&exporter, &telemetry_path);
        App {
            exporter,
            telemetry_path,
            scrapes: (max_requests > 0).then(|| Arc::new(Semaphore::new(max_requests))),
            landing: Bytes::from(landing),
            accept_errors: RateLimit::new(Duration::from_secs(10)),
            client_errors: RateLimit::new(Duration::from_secs(60)),
            web,
            no_web: Arc::new(WebConfig::default()),
            auth: Authenticator::default(),
            stalls: Arc::new(StallReport::new(write_timeout)),
        }
    }

    /// The web configuration in force now (reloaded if its files changed).
    fn web_config(&self) -> Arc<WebConfig> {
        match &self.web {
            Some(file) => file.current(),
            None => Arc::clone(&self.no_web),
        }
    }

    /// Answers one request: size limits, authentication, then routing; the configured
    /// headers go on every answer.
    pub async fn respond<B>(self: &Arc<Self>, req: &Request<B>) -> Response<Body> {
        let web = self.web_config();
        let mut response = self.checked(&web, req).await;
        for (name, value) in &web.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }

    async fn checked<B>(self: &Arc<Self>, web: &WebConfig, req: &Request<B>) -> Response<Body> {
        // exporter-toolkit's rate_limit comes first: before authentication, so that a flood
        // of guesses is limited too.
        if web.rate_limit.as_ref().is_some_and(|limit| !limit.allow()) {
            return text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
        }
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES) || req.headers().contains_key(header::TRANSFER_ENCODING) {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request bodies are not accepted\n");
        }
        if !web.users.is_empty() && !self.auth.check(&web.users, req.headers().get(header::AUTHORIZATION)).await {
            let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            return r;
        }
        self.handle(req)
    }

    /// Routes one request that passed the checks.
    pub fn handle<B>(self: &Arc<Self>, req: &Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET or HEAD\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = req.uri().path();
        if path == self.telemetry_path {
            return self.metrics(req);
        }
        match path {
            "/" => {
                let mut r = Response::new(Body::full(self.landing.clone()));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
                r
            }
            "/-/healthy" => text(StatusCode::OK, "Healthy\n"),
            "/-/ready" => text(StatusCode::OK, "Ready\n"),
            _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }

    fn metrics<B>(self: &Arc<Self>, req: &Request<B>) -> Response<Body> {
        let query = req.uri().query().unwrap_or("");
        let names: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "collect[]")
            .map(|(_, v)| v.into_owned())
            .collect();
        let wanted = match self.exporter.filter(names.iter().map(String::as_str)) {
            Ok(w) => w,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        let permit = match &self.scrapes {
            None => None,
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "too many concurrent scrapes (--web.max-requests)\n");
                }
            },
        };
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let format = Format::negotiate(header(header::ACCEPT));
        let gzip = accepts_gzip(header(header::ACCEPT_ENCODING));
        let body = if req.method() == Method::HEAD {
            Body::empty()
        } else {
            match self.stream_scrape(wanted, format, gzip, permit) {
                Ok(b) => b,
                Err(SpawnRefused) => {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "no thread available for the scrape; see the log\n")
                }
            }
        };
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
        h.insert(header::VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
        if gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    }

    /// Runs the scrape on a blocking thread; its output reaches the client in chunks as
    /// it is written, so a scrape's size never sits in memory whole. Only a scrape that
    /// completed sends the end marker; any other ending aborts the response.
    fn stream_scrape(
        self: &Arc<Self>,
        wanted: CollectorSet,
        format: Format,
        gzip: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Body, SpawnRefused> {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let to_body = move |chunk: Chunk| {
            tx.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
        };
        let app = Arc::clone(self);
        if !gzip {
            spawn_blocking(move || {
                let _permit = permit;
                let result = write_scrape(&app.exporter, wanted, ChunkWriter::new(to_body), format)
                    .and_then(ChunkWriter::finish);
                if let Err(e) = result {
                    log::debug!("scrape not delivered: {e}");
                }
            })?;
            return Ok(Body::stream(rx));
        }
        // Compression runs on its own thread, fed chunk by chunk, so that it overlaps with
        // encoding instead of adding to it. It closes the gzip stream only on the
        // encoder's end marker: a failed scrape must not look like a short, whole one.
        let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
        spawn_blocking(move || {
            if let Err(e) = compress(raw_rx.iter(), to_body) {
                log::debug!("scrape not delivered: {e}");
            }
        })?;
        spawn_blocking(move || {
            let _permit = permit;
            let to_gzip = move |chunk| {
                raw_tx.send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "compressor stopped"))
            };
            if let Err(e) =
                write_scrape(&app.exporter, wanted, ChunkWriter::new(to_gzip), format).and_then(ChunkWriter::finish)
            {
                log::debug!("scrape not delivered: {e}");
            }
        })?;
        Ok(Body::stream(rx))
    }
}

/// Gzips `chunks` into `to_body`; closes the gzip stream and sends the end marker only on
/// the encoder's own end marker.
fn compress(chunks: impl Iterator<Item = Chunk>, to_body: impl FnMut(Chunk) -> io::Result<()>) -> io::Result<()> {
    let mut gz = GzEncoder::new(ChunkWriter::new(to_body), Compression::fast());
    for chunk in chunks {
        match chunk {
            Chunk::Data(data) => gz.write_all(&data)?,
            Chunk::End => return gz.finish().and_then(ChunkWriter::finish),
        }
    }
    Err(io::Error::other("the scrape stopped before it was complete"))
}

/// The runtime could not start a thread for a scrape.
struct SpawnRefused;

/// `spawn_blocking`, which panics when the system refuses a thread and none is idle:
/// that refusal is an answer for one request (503), not the end of the process.
fn spawn_blocking(f: impl FnOnce() + Send + 'static) -> Result<(), SpawnRefused> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tokio::task::spawn_blocking(f))) {
        Ok(_) => Ok(()),
        Err(_) => {
            log::error!("no thread could be started for a scrape (TasksMax or RLIMIT_NPROC reached?)");
            Err(SpawnRefused)
        }
    }
}

fn write_scrape<W: Write>(exporter: &Exporter, wanted: CollectorSet, out: W, format: Format) -> io::Result<W> {
    let mut enc = Encoder::new(out, format);
    exporter.collect(wanted, &mut enc)?;
    enc.finish()
}

/// Collects output into chunks of [`CHUNK_BYTES`] and hands each on; [`finish`](Self::finish)
/// sends the rest and the end marker.
struct ChunkWriter<F: FnMut(Chunk) -> io::Result<()>> {
    buf: Vec<u8>,
    send: F,
}

impl<F: FnMut(Chunk) -> io::Result<()>> ChunkWriter<F> {
    fn new(send: F) -> Self {
        ChunkWriter { buf: Vec::with_capacity(CHUNK_BYTES), send }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        (self.send)(Chunk::Data(Bytes::from(chunk)))
    }

    fn finish(mut self) -> io::Result<()> {
        self.send()?;
        (self.send)(Chunk::End)
    }
}

impl<F: FnMut(Chunk) -> io::Result<()>> Write for ChunkWriter<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn landing_page(exporter: &Exporter, telemetry_path: &str) -> String {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let collectors: Vec<&str> = exporter.config().collectors.names().collect();
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>conn-exporter</title></head>\n<body>\n<h1>conn-exporter</h1>\n<p>{}</p>\n<p>Every TCP connection of this host, IPv4 and IPv6.</p>\n<ul>\n<li><a href=\"{path}\">Metrics</a></li>\n<li><a href=\"{path}?collect[]=states\">Aggregate counts only</a></li>\n<li><a href=\"/-/healthy\">Health</a></li>\n</ul>\n<p>Enabled collectors: {}</p>\n</body></html>\n",
        escape(&version_line()),
        escape(&collectors.join(", ")),
        path = escape(telemetry_path),
    )
}

/// Serves HTTP on `listeners` until `shutdown` turns true, then lets requests in flight
/// finish (up to `grace`).
pub async fn serve(listeners: Vec<TcpListener>, app: Arc<App>, shutdown: watch::Receiver<bool>, grace: Duration) {
    let mut loops = JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, Arc::clone(&app), shutdown.clone(), grace));
    }
    while loops.join_next().await.is_some() {}
}

async fn accept_loop(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&app), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    if app.accept_errors.allow() {
                        log::warn!("accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        log::warn!("{} connection(s) still open after {grace:?}; closing them", connections.len());
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, app: Arc<App>, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let web = app.web_config();
    let Some(tls) = &web.tls else {
        return serve_http(stream, app, shutdown).await;
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, first_bytes(&stream)).await {
        Ok(Ok(FirstBytes::Tls)) => {}
        Ok(Ok(FirstBytes::PlainHttp)) => return answer_plain_http(stream).await,
        Ok(Ok(FirstBytes::Other)) | Ok(Err(_)) | Err(_) => return,
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server));
    let stream = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if app.client_errors.allow() {
                log::debug!("TLS handshake failed: {e}");
            }
            return;
        }
        Err(_) => return,
    };
    if !tls.allowed_sans.is_empty() {
        let allowed = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .is_some_and(|c| cert_has_allowed_san(c, &tls.allowed_sans));
        if !allowed {
            if app.client_errors.allow() {
                log::info!("client certificate refused: no SAN in client_allowed_sans");
            }
            return;
        }
    }
    serve_http(stream, app, shutdown).await
}

/// What a connection to a TLS listener starts with.
#[derive(Debug, PartialEq, Eq)]
enum FirstBytes {
    /// A TLS handshake record (content type 22).
    Tls,
    /// Text that starts like an HTTP/1 request line.
    PlainHttp,
    /// Anything else, or nothing before the client closed.
    Other,
}

/// TLS records start with their content type, 0x16 for a handshake; an HTTP/1 request
/// starts with an upper-case method and a space.
fn classify(head: &[u8]) -> FirstBytes {
    match head.first() {
        Some(0x16) => FirstBytes::Tls,
        Some(b'A'..=b'Z') => {
            let method_len = head.iter().take_while(|b| b.is_ascii_uppercase()).count();
            if method_len == head.len() || head[method_len] == b' ' {
                FirstBytes::PlainHttp
            } else {
                FirstBytes::Other
            }
        }
        _ => FirstBytes::Other,
    }
}

/// Looks at the first bytes without consuming them: the TLS handshake still reads them.
async fn first_bytes(stream: &tokio::net::TcpStream) -> io::Result<FirstBytes> {
    let mut head = [0u8; 8];
    let n = stream.peek(&mut head).await?;
    Ok(classify(&head[..n]))
}

/// Go's servers answer a plain-HTTP request on a TLS port with this 400; so does this one,
/// instead of TLS alert bytes that clients show as "HTTP/0.9 when not allowed".
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server: use https://\n";

async fn answer_plain_http(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, async {
        stream.write_all(PLAIN_HTTP_ON_TLS).await?;
        stream.shutdown().await?;
        // Read what the client sent (up to a request head's size) before closing: closing
        // with unread data would reset the connection, and the client could lose the answer.
        let mut sink = [0u8; 4096];
        let mut left = MAX_HEAD_BYTES;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        io::Result::Ok(())
    })
    .await;
}

async fn serve_http<I>(io: I, app: Arc<App>, mut shutdown: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app_stalls = Arc::clone(&app.stalls);
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(app.respond(&req).await) }
    });
    let io = StallTimeout::new(io, Arc::clone(&app_stalls));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_tls_from_plain_http() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), FirstBytes::Tls);
        assert_eq!(classify(b"GET /met"), FirstBytes::PlainHttp);
        assert_eq!(classify(b"OPTIONS "), FirstBytes::PlainHttp);
        assert_eq!(classify(b"HEA"), FirstBytes::PlainHttp, "a method cut short by the peek");
        assert_eq!(classify(b"SSH-2.0-"), FirstBytes::Other);
        assert_eq!(classify(b"get /"), FirstBytes::Other);
        assert_eq!(classify(b""), FirstBytes::Other);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn compressed(chunks: Vec<Chunk>) -> (io::Result<()>, Vec<Chunk>) {
        let mut sent = Vec::new();
        let result = compress(chunks.into_iter(), |c| {
            sent.push(c);
            Ok(())
        });
        (result, sent)
    }

    #[test]
    fn gzip_ends_the_body_only_after_the_encoders_end_marker() {
        let data = || Chunk::Data(Bytes::from_static(b"network_connection_states 1\n"));
        let (result, sent) = compressed(vec![data(), Chunk::End]);
        assert!(result.is_ok());
        assert!(matches!(sent.last(), Some(Chunk::End)));
        let gz: Vec<u8> = sent
            .iter()
            .filter_map(|c| if let Chunk::Data(d) = c { Some(d.to_vec()) } else { None })
            .flatten()
            .collect();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
        assert_eq!(text, "network_connection_states 1\n");

        // The encoder stopped without its marker (failed or panicked): no end, an error.
        let (result, sent) = compressed(vec![data()]);
        assert!(result.is_err());
        assert!(!sent.iter().any(|c| matches!(c, Chunk::End)), "a cut scrape must not end cleanly");
    }
}
