//! Write coalescing under an HTTP/2 connection.
//!
//! `h2` writes each DATA frame larger than 256 bytes on its own and flushes after it, so every
//! push became one TLS record and one `sendmsg`: at 3 KB pushes that was 7 µs of the gateway's
//! CPU per push, most of it in the kernel. [`Coalesced`] gathers the connection's writes in one
//! buffer. The first flush a poll of the connection's task asks for is answered at once and the
//! task woken, so the bytes wait for its next poll, after the runtime has run the other ready
//! tasks (the deliveries queueing more requests on this connection); they wait again while each
//! poll adds more, up to [`MAX_DEFERRALS`] polls, then go out in one write. [`Turns`] counts the
//! task's polls. A lone request waits one scheduler turn; under load, many pushes share a record
//! and a syscall, and the task is not polled again for each push's DATA frame. A standalone 3 KB
//! broadcast to 100k made about 0.30 write syscalls per push when the flush yielded the task
//! instead, 0.21 with this.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Gathered bytes above this are written out without waiting for a flush. Four TLS records.
const HIGH_WATER: usize = 64 * 1024;

/// Polls a flush may wait while each poll adds more to write.
const MAX_DEFERRALS: u8 = 4;

/// Counts the polls of the task that drives a [`Coalesced`] stream's connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct Turns(Arc<AtomicU64>);

impl Turns {
    /// Polls `future` to its end, counting each poll.
    pub(crate) async fn drive<F: Future>(self, future: F) -> F::Output {
        let mut future = pin!(future);
        std::future::poll_fn(|cx| {
            self.0.fetch_add(1, Ordering::Relaxed);
            future.as_mut().poll(cx)
        })
        .await
    }

    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// An I/O stream whose writes are gathered and written out once a flush request has waited.
#[derive(Debug)]
pub(crate) struct Coalesced<T> {
    inner: T,
    gathered: Vec<u8>,
    /// How much of `gathered` the inner stream has taken.
    written: usize,
    turns: Turns,
    /// Polls the pending flush has been deferred by.
    deferrals: u8,
    /// The poll that last deferred the flush: its later flush requests defer too.
    deferred_in: Option<u64>,
    /// How much was gathered when the flush was last deferred.
    gathered_at_deferral: usize,
}

impl<T> Coalesced<T> {
    /// The stream, and the counter its driving task must be polled through ([`Turns::drive`]):
    /// a deferred flush is written out only in a later poll.
    pub(crate) fn new(inner: T) -> (Self, Turns) {
        let turns = Turns::default();
        let stream = Self {
            inner,
            gathered: Vec::with_capacity(HIGH_WATER),
            written: 0,
            turns: turns.clone(),
            deferrals: 0,
            deferred_in: None,
            gathered_at_deferral: 0,
        };
        (stream, turns)
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out everything gathered; `Pending` only when the inner stream is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.gathered.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.gathered[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.gathered.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room before gathering more: drains once the buffer is past its high-water mark.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.gathered.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether a flush asked for now may wait for a later poll.
    fn may_defer(&self, turn: u64) -> bool {
        let len = self.gathered.len();
        if len == 0 || len >= HIGH_WATER {
            return false;
        }
        // This poll already chose to wait and woke its task for the next one.
        if self.deferred_in == Some(turn) {
            return true;
        }
        let still_growing = self.deferrals == 0 || len > self.gathered_at_deferral;
        still_growing && self.deferrals < MAX_DEFERRALS
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        self.gathered.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        let mut taken = 0;
        for buf in bufs {
            self.gathered.extend_from_slice(buf);
            taken += buf.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let turn = self.turns.now();
        if self.may_defer(turn) {
            if self.deferred_in != Some(turn) {
                self.deferrals += 1;
                self.deferred_in = Some(turn);
                // Polled again at the back of the run queue: the tasks ahead may add requests.
                cx.waker().wake_by_ref();
            }
            self.gathered_at_deferral = self.gathered.len();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        self.deferrals = 0;
        self.deferred_in = None;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the inner stream.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            // Take at most 10 KB a call, like a socket with a small send buffer.
            let n = buf.len().min(10_000);
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Asks for flushes, a poll at a time, until everything gathered is written out.
    async fn flush_out(io: &mut Coalesced<Recorder>, turns: &Turns) {
        turns
            .clone()
            .drive(std::future::poll_fn(|cx| {
                ready!(Pin::new(&mut *io).poll_flush(cx)).unwrap();
                if io.gathered.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }))
            .await;
    }

    #[tokio::test]
    async fn flushes_asked_for_within_one_poll_write_nothing_until_a_later_poll() {
        let (mut io, turns) = Coalesced::new(Recorder::default());
        let mut expected = Vec::new();
        let mut polls = 0;
        turns
            .clone()
            .drive(std::future::poll_fn(|cx| {
                polls += 1;
                if polls == 1 {
                    // As h2 does: a flush after every DATA frame.
                    for i in 0..20u8 {
                        let frame = [i; 3000];
                        assert!(Pin::new(&mut io).poll_write(cx, &frame).is_ready());
                        expected.extend_from_slice(&frame);
                        assert!(Pin::new(&mut io).poll_flush(cx).is_ready(), "the poll goes on writing");
                    }
                    assert!(io.inner.writes.is_empty(), "nothing is written in the poll that asked");
                    // The deferral woke the task: it is polled again.
                    return Poll::Pending;
                }
                ready!(Pin::new(&mut io).poll_flush(cx)).unwrap();
                Poll::Ready(())
            }))
            .await;
        assert_eq!(polls, 2);
        assert_eq!(io.inner.writes.concat(), expected);
        // 60,000 bytes through a stream taking 10,000 a call: 6 writes, not 20.
        assert_eq!(io.inner.writes.len(), 6);
        assert_eq!(io.inner.flushes, 1);
        assert_eq!(io.deferrals, 0);
    }

    /// Returns `Pending` once, waking itself: one scheduler turn.
    async fn one_turn() {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if std::mem::replace(&mut yielded, true) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
    }

    /// A connection task as `h2` runs one: each poll writes the frames queued since the last,
    /// flushing after each and at the end, until it is told to stop and all is written.
    /// `frames_later` more frames are queued one scheduler turn apart. Returns what reached the
    /// stream, a write per entry.
    async fn connection_with_frames_queued_over(frames_later: u8) -> Vec<Vec<u8>> {
        let queue = Arc::new(Mutex::new((vec![vec![0u8; 100]], false)));
        let connection = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move {
                let (mut io, turns) = Coalesced::new(Recorder::default());
                turns
                    .drive(std::future::poll_fn(|cx| {
                        let (frames, done) = &mut *queue.lock().unwrap();
                        for frame in frames.drain(..) {
                            assert!(Pin::new(&mut io).poll_write(cx, &frame).is_ready());
                            assert!(Pin::new(&mut io).poll_flush(cx).is_ready());
                        }
                        // h2 ends every poll with a flush.
                        assert!(Pin::new(&mut io).poll_flush(cx).is_ready());
                        if *done && io.gathered.is_empty() {
                            return Poll::Ready(());
                        }
                        // Like a connection that has more to read: polled again next turn.
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }))
                    .await;
                io.inner.writes
            }
        });
        let requests = tokio::spawn(async move {
            for i in 1..=frames_later {
                queue.lock().unwrap().0.push(vec![i; 100]);
                one_turn().await;
            }
            queue.lock().unwrap().1 = true;
        });
        requests.await.unwrap();
        connection.await.unwrap()
    }

    #[tokio::test]
    async fn a_flush_waits_while_each_poll_adds_more() {
        let writes = connection_with_frames_queued_over(MAX_DEFERRALS - 1).await;
        assert_eq!(writes.len(), 1, "one write for every frame queued while the flush waited");
        let expected: Vec<u8> = (0..MAX_DEFERRALS).flat_map(|i| [i; 100]).collect();
        assert_eq!(writes[0], expected);
    }

    #[tokio::test]
    async fn a_flush_waits_a_bounded_number_of_polls() {
        // Frames keep coming every turn; the flush goes out after MAX_DEFERRALS polls anyway.
        let writes = connection_with_frames_queued_over(3 * MAX_DEFERRALS).await;
        assert_eq!(writes[0].len(), 100 * (usize::from(MAX_DEFERRALS) + 1));
        let expected: Vec<u8> = (0..=3 * MAX_DEFERRALS).flat_map(|i| [i; 100]).collect();
        assert_eq!(writes.concat(), expected, "every frame, in order");
    }

    #[tokio::test]
    async fn past_the_high_water_mark_writes_go_out_without_a_flush() {
        let (mut io, turns) = Coalesced::new(Recorder::default());
        for _ in 0..30 {
            io.write_all(&[7; 3000]).await.unwrap();
        }
        let written: usize = io.inner.writes.iter().map(Vec::len).sum();
        assert!(written >= HIGH_WATER, "{written} bytes written");
        flush_out(&mut io, &turns).await;
        assert_eq!(io.inner.writes.iter().map(Vec::len).sum::<usize>(), 90_000);
    }

    #[tokio::test]
    async fn a_flush_with_nothing_gathered_is_not_deferred() {
        let (mut io, _turns) = Coalesced::new(Recorder::default());
        io.flush().await.unwrap();
        assert_eq!(io.inner.flushes, 1);
        assert_eq!(io.deferrals, 0);
    }

    #[tokio::test]
    async fn reads_and_shutdown_pass_through() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let (mut io, _turns) = Coalesced::new(client);
        server.write_all(b"answer").await.unwrap();
        let mut read = [0; 6];
        io.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"answer");
        io.write_all(b"request").await.unwrap();
        io.shutdown().await.unwrap();
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"request");
    }
}
