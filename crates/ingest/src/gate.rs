//! What every pushfan RPC passes before its handler runs, in front of each pushfan service (not
//! health or reflection, which stay open):
//!
//! 1. the API key (`authorization: Bearer <key>`) names a tenant, else UNAUTHENTICATED;
//! 2. the tenant is within its request rate, else RESOURCE_EXHAUSTED with the time to wait
//!    (`retry-after` metadata in whole seconds, and a `google.rpc.RetryInfo` detail);
//! 3. a place among `max_concurrent_requests`, waited for up to `request_timeout`, else
//!    UNAVAILABLE;
//! 4. the request then runs within `request_timeout` (DEADLINE_EXCEEDED after), except
//!    `BulkImport`, which streams as long as its client sends; every request body must send its
//!    next frame within `request_timeout` of the server asking for it;
//! 5. a `WatchBroadcast` also takes one of `max_watches` places, held until its stream ends,
//!    else RESOURCE_EXHAUSTED: a watch polls the ledger for as long as it lasts.
//!
//! This is a tower service around the generated server rather than a tonic interceptor so it
//! can name the method in metrics; like an interceptor it sees only the headers, so a refused
//! request's body is never read, let alone decoded: an unauthenticated 4 MiB message costs at
//! most the HTTP/2 stream window the client may send before the refusal reaches it.
//!
//! The tenant travels to the handler in the request's extensions ([`Caller`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use pushfan_store::TenantId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap};
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::ApiKeys;
use crate::limits::{Limits, RateExceeded, RateLimiter};
use crate::telemetry;

/// An RPC of the pushfan API, as the gate treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Method {
    /// The method's name, a metrics label.
    pub(crate) name: &'static str,
    /// The client streams its request: no deadline on the whole call.
    streams_requests: bool,
    /// The server streams its answer for as long as it lasts: a watch place is held with it.
    streams_responses: bool,
}

const fn unary(name: &'static str) -> Method {
    Method { name, streams_requests: false, streams_responses: false }
}

/// Every method of `pushfan.v1`; a test checks the list against the descriptors.
pub(crate) const METHODS: &[Method] = &[
    unary("Subscribe"),
    unary("Unsubscribe"),
    unary("GetSubscription"),
    unary("ListSubscriptions"),
    unary("TagSubscriptions"),
    unary("UntagSubscriptions"),
    Method { name: "BulkImport", streams_requests: true, streams_responses: false },
    unary("Publish"),
    unary("GetBroadcast"),
    // Its handler answers at once with the stream, so the deadline ends with the handler.
    Method { name: "WatchBroadcast", streams_requests: false, streams_responses: true },
];

/// A path no method has (the router answers UNIMPLEMENTED after the gate).
const UNKNOWN: Method = unary("unknown");

/// The method a request path (`/pushfan.v1.Service/Method`) names; a fixed string, so metrics
/// labels stay few whatever clients send.
pub(crate) fn method_of(path: &str) -> Method {
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS.iter().find(|method| method.name == name).copied().unwrap_or(UNKNOWN)
}

/// The authenticated tenant of a request, put in its extensions by the gate.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) TenantId);

/// The checks, shared by every connection and service.
#[derive(Debug)]
pub(crate) struct Gate {
    keys: Arc<ApiKeys>,
    rates: RateLimiter,
    places: Arc<Semaphore>,
    watches: Arc<Semaphore>,
    request_timeout: Duration,
}

impl Gate {
    pub(crate) fn new(keys: Arc<ApiKeys>, rates: RateLimiter, limits: &Limits) -> Self {
        Self {
            keys,
            rates,
            places: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            watches: Arc::new(Semaphore::new(limits.max_watches.max(1))),
            request_timeout: limits.request_timeout,
        }
    }

    /// `service` behind this gate.
    pub(crate) fn guard<S>(self: &Arc<Self>, service: S) -> Gated<S> {
        Gated { inner: service, gate: Arc::clone(self) }
    }

    /// Steps 1 and 2: the tenant, if its key is known and it is within its rate.
    fn admit(&self, headers: &HeaderMap) -> Result<TenantId, Status> {
        let value = headers.get(http::header::AUTHORIZATION).and_then(|value| value.to_str().ok());
        let tenant = self.keys.authenticate_header(value).map_err(|error| error.to_status())?;
        self.rates.check(&tenant).map_err(|exceeded| rate_status(&tenant, &exceeded))?;
        Ok(tenant)
    }
}

/// RESOURCE_EXHAUSTED for a tenant over its rate, saying when to come back.
fn rate_status(tenant: &TenantId, exceeded: &RateExceeded) -> Status {
    let wait = exceeded.retry_after;
    let message = format!(
        "tenant {tenant} exceeded {} requests/s; retry after {:.3} s",
        exceeded.per_second,
        wait.as_secs_f64()
    );
    let mut metadata = MetadataMap::new();
    // Whole seconds, rounded up, as HTTP's Retry-After; the detail has the exact wait.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    metadata.insert("retry-after", seconds.max(1).into());
    Status::with_error_details_and_metadata(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(wait)),
        metadata,
    )
}

/// A service behind the gate.
#[derive(Clone, Debug)]
pub(crate) struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Gated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let method = method_of(request.uri().path());
        let gate = Arc::clone(&self.gate);
        // The service that was polled ready goes into the future; a clone stays for the next call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let admitted = gate.admit(request.headers());
        Box::pin(async move {
            let tenant = match admitted {
                Ok(tenant) => tenant,
                Err(status) => return Ok(refuse(method, status)),
            };
            let watch = if method.streams_responses {
                let Ok(watch) = Arc::clone(&gate.watches).try_acquire_owned() else {
                    return Ok(refuse(
                        method,
                        Status::resource_exhausted(
                            "the server has as many watches open as it allows; retry later",
                        ),
                    ));
                };
                Some(watch)
            } else {
                None
            };
            let deadline = Instant::now() + gate.request_timeout;
            let place = match tokio::time::timeout_at(deadline, Arc::clone(&gate.places).acquire_owned())
                .await
            {
                Ok(Ok(place)) => place,
                Ok(Err(_)) | Err(_) => {
                    return Ok(refuse(
                        method,
                        Status::unavailable("the server is at its limit of concurrent requests; retry later"),
                    ))
                }
            };
            request.extensions_mut().insert(Caller(tenant));
            let request = request.map(|body| Body::new(IdleBody::new(body, gate.request_timeout)));
            let answer = inner.call(request);
            let response = if method.streams_requests {
                answer.await
            } else {
                match tokio::time::timeout_at(deadline, answer).await {
                    Ok(response) => response,
                    Err(_) => Ok(refuse(
                        method,
                        Status::deadline_exceeded(format!(
                            "the request took longer than the server's {} s limit",
                            gate.request_timeout.as_secs_f64()
                        )),
                    )),
                }
            };
            drop(place);
            let Ok(response) = response;
            Ok(match watch {
                Some(watch) => response.map(|body| Body::new(Held { inner: body, _watch: watch })),
                None => response,
            })
        })
    }
}

/// The answer to a request the gate stops, counted like the handlers' answers.
fn refuse(method: Method, status: Status) -> http::Response<Body> {
    telemetry::count_refusal(method.name, status.code());
    tracing::debug!(method = method.name, code = ?status.code(), message = status.message(), "request refused");
    status.into_http()
}

/// A streamed answer and the watch place it holds until it ends or its client goes.
struct Held {
    inner: Body,
    _watch: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose next frame must come within `idle` of the server asking for it. The
/// timer runs only while the server waits: a handler busy writing one batch to the store is
/// not the client's delay.
struct IdleBody {
    inner: Body,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl IdleBody {
    fn new(inner: Body, idle: Duration) -> Self {
        Self { inner, idle, timer: Box::pin(tokio::time::sleep(idle)), armed: false }
    }
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame);
        }
        if !this.armed {
            this.armed = true;
            let at = Instant::now() + this.idle;
            this.timer.as_mut().reset(at);
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.armed = false;
                Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "the client sent nothing of its request for {} s",
                    this.idle.as_secs_f64()
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    #[test]
    fn the_method_list_is_every_method_of_the_api() {
        let set = prost_types::FileDescriptorSet::decode(pushfan_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut described = BTreeSet::new();
        for file in set.file.iter().filter(|file| file.package() == "pushfan.v1") {
            for service in &file.service {
                for method in &service.method {
                    assert_eq!(
                        method_of(&format!("/pushfan.v1.{}/{}", service.name(), method.name()))
                            .streams_requests,
                        method.client_streaming(),
                        "{}",
                        method.name()
                    );
                    described.insert(method.name().to_owned());
                }
            }
        }
        let listed: BTreeSet<_> = METHODS.iter().map(|m| m.name.to_owned()).collect();
        assert_eq!(listed, described);
        assert_eq!(method_of("/pushfan.v1.PublishService/Publish").name, "Publish");
        assert_eq!(method_of("/x/SomethingElse").name, "unknown");
        assert_eq!(method_of("").name, "unknown");
    }

    #[test]
    fn a_rate_refusal_says_who_how_fast_and_when_to_retry() {
        let tenant = TenantId::new("acme").unwrap();
        let status =
            rate_status(&tenant, &RateExceeded { per_second: 10, retry_after: Duration::from_millis(1500) });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "tenant acme exceeded 10 requests/s; retry after 1.500 s");
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        let retry = status.get_details_retry_info().expect("a RetryInfo detail");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
    }
}
