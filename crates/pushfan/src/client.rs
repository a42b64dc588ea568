//! The gRPC client side of the CLI: connecting with an API key, and watching a broadcast with a
//! progress bar.

use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use pushfan_proto::v1::broadcast_service_client::BroadcastServiceClient;
use pushfan_proto::v1::publish_service_client::PublishServiceClient;
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_proto::v1::{Broadcast, WatchBroadcastRequest};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone, Debug)]
pub(crate) struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// Clients of the three services, sharing one HTTP/2 connection.
#[derive(Clone, Debug)]
pub(crate) struct Clients {
    /// Subscriptions.
    pub(crate) subscriptions: SubscriptionServiceClient<Authed>,
    /// Publishing.
    pub(crate) publish: PublishServiceClient<Authed>,
    /// Progress.
    pub(crate) broadcasts: BroadcastServiceClient<Authed>,
}

impl Clients {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`) as the tenant owning `api_key`.
    pub(crate) async fn connect(url: &str, api_key: &str) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_owned())
            .with_context(|| format!("{url} is not a valid server URL"))?
            .connect()
            .await
            .with_context(|| format!("connecting to the pushfan API at {url}"))?;
        let bearer = Bearer(format!("Bearer {api_key}").parse().context("the API key is not valid ASCII")?);
        // Bulk imports and big broadcasts carry large messages.
        let max = 64 * 1024 * 1024;
        Ok(Self {
            subscriptions: SubscriptionServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_encoding_message_size(max),
            publish: PublishServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            broadcasts: BroadcastServiceClient::with_interceptor(channel, bearer),
        })
    }

    /// Follows a broadcast until it completes, drawing a progress bar when `show` is set;
    /// returns its final state and how long it took from the call.
    pub(crate) async fn watch(
        &mut self,
        broadcast_id: &str,
        show: bool,
    ) -> anyhow::Result<(Broadcast, Duration)> {
        let started = Instant::now();
        let bar = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} finished  {per_sec}  {msg}",
            )
            .expect("a valid template"),
        );
        let mut updates = self
            .broadcasts
            .watch_broadcast(WatchBroadcastRequest { broadcast_id: broadcast_id.to_owned() })
            .await
            .context("watching the broadcast")?
            .into_inner();
        let mut last = None;
        while let Some(update) = updates.message().await.context("watching the broadcast")? {
            let Some(broadcast) = update.broadcast else { continue };
            let finished = broadcast.accepted
                + broadcast.gone
                + broadcast.rejected
                + broadcast.failed
                + broadcast.expired
                + broadcast.encrypt_failed;
            // Results (and with them `targeted`) trail what the workers have handed on.
            bar.set_length(broadcast.targeted.max(broadcast.handed_on + broadcast.encrypt_failed));
            bar.set_position(finished);
            bar.set_message(format!(
                "handed on {}  accepted {}  gone {}  rejected {}  failed {}  shards {}/{}",
                broadcast.handed_on,
                broadcast.accepted,
                broadcast.gone,
                broadcast.rejected,
                broadcast.failed,
                broadcast.shards_done,
                broadcast.shards_total
            ));
            let complete = broadcast.complete;
            last = Some(broadcast);
            if complete {
                break;
            }
        }
        bar.finish();
        let broadcast = last.context("the server ended the watch before reporting the broadcast")?;
        anyhow::ensure!(broadcast.complete, "the server ended the watch before the broadcast completed");
        Ok((broadcast, started.elapsed()))
    }
}

/// A broadcast's final counts, one per line.
pub(crate) fn summary(broadcast: &Broadcast) -> String {
    let mut text = format!(
        "broadcast {}\n  targeted {}\n  encrypted {} (failed {})\n  accepted {}\n  gone {} (pruned {})\n  rejected {}\n  failed after retries {}\n  expired {}\n",
        broadcast.broadcast_id,
        broadcast.targeted,
        broadcast.encrypted,
        broadcast.encrypt_failed,
        broadcast.accepted,
        broadcast.gone,
        broadcast.pruned,
        broadcast.rejected,
        broadcast.failed,
        broadcast.expired,
    );
    for rejection in &broadcast.rejections {
        text.push_str(&format!(
            "    {} × HTTP {} {}\n",
            rejection.count, rejection.http_status, rejection.reason
        ));
    }
    text
}
