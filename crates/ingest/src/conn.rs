//! Accepting connections: at most `max_connections` at once, TLS when configured, and a
//! deadline for a new connection's first bytes of HTTP/2.
//!
//! The accept loop takes a place before it calls `accept`, so past the bound new connections
//! wait in the kernel's listen backlog rather than costing the server anything; a connection
//! gives its place back when it closes. TLS handshakes run on tasks of their own (one slow
//! client does not hold up the others) and hold their connection's place.
//!
//! A connection must deliver the 24-byte HTTP/2 preface within the handshake timeout of being
//! accepted, TLS handshake included; until then its reads are watched by a timer, after that
//! they are plain. hyper has no such deadline for HTTP/2 (its keepalive pings start once the
//! preface is in), so without it a client that opens connections and sends nothing, or stops
//! after the TLS handshake, would hold them forever.
//!
//! Metrics: `pushfan_ingest_connections` (open, past their handshake) and
//! `pushfan_ingest_connections_dropped_total{reason}` (`handshake_timeout`, `tls`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// How long the accept loop rests after an error that is not the peer's (out of file
/// descriptors, say), so it does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The accepted connections of one listener, as the stream tonic serves.
pub(crate) fn incoming(
    listener: TcpListener,
    max_connections: usize,
    handshake_timeout: Duration,
    tls: Option<TlsAcceptor>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let state = Acceptor {
        listener,
        places: Arc::new(Semaphore::new(max_connections.max(1))),
        handshake_timeout,
        tls,
        handshakes: JoinSet::new(),
    };
    futures::stream::unfold(state, |mut state| async move {
        let conn = state.next().await;
        Some((Ok(conn), state))
    })
}

struct Acceptor {
    listener: TcpListener,
    places: Arc<Semaphore>,
    handshake_timeout: Duration,
    tls: Option<TlsAcceptor>,
    /// TLS handshakes under way; each ends in a connection or nothing.
    handshakes: JoinSet<Option<Conn>>,
}

impl Acceptor {
    /// The next connection ready for HTTP/2. Errors are logged and skipped: an error from the
    /// stream would stop the whole server.
    async fn next(&mut self) -> Conn {
        loop {
            let accepted = tokio::select! {
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok(Some(conn)) => return conn,
                        Ok(None) => continue,
                        Err(error) => {
                            tracing::warn!(%error, "a TLS handshake task failed");
                            continue;
                        }
                    }
                }
                accepted = accept(&self.listener, &self.places) => accepted,
            };
            let (stream, peer, place) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !peer_error(&error) {
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            };
            // gRPC messages are small and answered at once; waiting to fill a segment only adds
            // latency.
            let _ = stream.set_nodelay(true);
            let deadline = Instant::now() + self.handshake_timeout;
            let Some(tls) = &self.tls else {
                return Conn::new(Io::Plain(stream), place, deadline);
            };
            let tls = tls.clone();
            self.handshakes.spawn(async move {
                match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => Some(Conn::new(Io::Tls(Box::new(stream)), place, deadline)),
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        dropped("tls");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        dropped("handshake_timeout");
                        None
                    }
                }
            });
        }
    }
}

/// Waits for a place, then for a connection. Cancel safe: a place taken is given back if the
/// accept is dropped, and `accept` itself is cancel safe.
async fn accept(
    listener: &TcpListener,
    places: &Arc<Semaphore>,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let place = Arc::clone(places)
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("the connection semaphore is closed"))?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, place))
}

/// Errors that concern one peer only, as tonic's own accept loop counts them.
fn peer_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(stream) => stream.get_ref().0,
        }
    }
}

/// An accepted connection: its stream, its place among `max_connections`, and while the
/// preface is not in, the deadline for it.
pub(crate) struct Conn {
    io: Io,
    /// Until the preface is in: bytes read so far and the timer.
    preface: Option<(usize, Pin<Box<Sleep>>)>,
    /// The preface did not come in time: every read fails.
    timed_out: bool,
    _place: OwnedSemaphorePermit,
}

impl Conn {
    fn new(io: Io, place: OwnedSemaphorePermit, deadline: Instant) -> Self {
        gauge!("pushfan_ingest_connections").increment(1.0);
        let preface = Some((0, Box::pin(tokio::time::sleep_until(deadline))));
        Self { io, preface, timed_out: false, _place: place }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        gauge!("pushfan_ingest_connections").decrement(1.0);
    }
}

fn dropped(reason: &'static str) {
    counter!("pushfan_ingest_connections_dropped_total", "reason" => reason).increment(1);
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake timed out")));
        }
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        };
        let Some((read, timer)) = &mut this.preface else { return polled };
        match polled {
            Poll::Ready(Ok(())) => {
                *read += buf.filled().len().saturating_sub(before);
                if *read >= PREFACE_LEN {
                    this.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if timer.as_mut().poll(cx).is_ready() => {
                this.timed_out = true;
                dropped("handshake_timeout");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, data),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, data),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, data),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = self.io.tcp();
        TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: tcp.peer_addr().ok() }
    }
}
