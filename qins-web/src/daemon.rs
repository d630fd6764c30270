//! The gRPC connection to qinsd. One channel is kept and shared; it is
//! dropped whenever qinsd looks gone, so the next request dials again and a
//! restarted daemon is picked up without restarting the bridge.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qins_proto::v1::qins_client::QinsClient;
use qins_proto::v1::{
    ChatEvent, ChatRequest, EmbedReply, EmbedRequest, ListModelsReply, ListModelsRequest,
    StatsReply, StatsRequest, chat_event,
};
use tonic::Streaming;
use tonic::transport::Channel;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Dialing a local socket is instant; longer means something is wedged.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Stats and model listing answer at once; chats stream and have no limit.
const UNARY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Daemon {
    socket: PathBuf,
    channel: Mutex<Option<Channel>>,
    /// Every finished reply is counted here, whichever API asked for it.
    metrics: Arc<Metrics>,
}

impl Daemon {
    pub fn new(socket: PathBuf, metrics: Arc<Metrics>) -> Self {
        Self {
            socket,
            channel: Mutex::new(None),
            metrics,
        }
    }

    async fn client(&self) -> Result<QinsClient<Channel>, ApiError> {
        // Clone out of the lock: it must not be held across an await.
        let cached = self.lock().clone();
        let channel = match cached {
            Some(channel) => channel,
            None => {
                let channel =
                    tokio::time::timeout(CONNECT_TIMEOUT, qins_proto::connect(&self.socket))
                        .await
                        .map_err(|_| {
                            ApiError::DaemonDown(format!(
                                "connecting to {} timed out",
                                self.socket.display()
                            ))
                        })??;
                *self.lock() = Some(channel.clone());
                channel
            }
        };
        Ok(QinsClient::new(channel))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Channel>> {
        // A poisoned lock only guards a cache; its value is still usable.
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Maps a failed call, forgetting the channel when qinsd looks gone
    /// (`ApiError::from` decides: a transport failure is `DaemonDown`
    /// whatever code tonic gave it), so the next request dials again.
    fn fail(&self, status: tonic::Status) -> ApiError {
        let error = ApiError::from(status);
        if matches!(error, ApiError::DaemonDown(_)) {
            *self.lock() = None;
        }
        error
    }

    pub async fn stats(&self) -> Result<StatsReply, ApiError> {
        let mut client = self.client().await?;
        let mut request = tonic::Request::new(StatsRequest {});
        request.set_timeout(UNARY_TIMEOUT);
        match client.stats(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.fail(status)),
        }
    }

    pub async fn list_models(&self) -> Result<ListModelsReply, ApiError> {
        let mut client = self.client().await?;
        let mut request = tonic::Request::new(ListModelsRequest {});
        request.set_timeout(UNARY_TIMEOUT);
        match client.list_models(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.fail(status)),
        }
    }

    /// Embeds the request's inputs (no time limit: a long batch takes a
    /// while on the CPU). Dropping the future cancels the pass in qinsd.
    pub async fn embed(&self, request: EmbedRequest) -> Result<EmbedReply, ApiError> {
        let mut client = self.client().await?;
        match client.embed(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.fail(status)),
        }
    }

    /// Starts a chat. Refusals (bad request, full queue, no model) arrive here
    /// as errors, before any event, so handlers can answer with a status code.
    /// Dropping the returned stream cancels the generation in qinsd.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ApiError> {
        let mut client = self.client().await?;
        match client.chat(request).await {
            Ok(reply) => Ok(ChatStream {
                inner: reply.into_inner(),
                metrics: Arc::clone(&self.metrics),
            }),
            Err(status) => Err(self.fail(status)),
        }
    }
}

/// A reply in flight. Its events all pass through [`ChatStream::message`],
/// which counts the reply's tokens and timings in the metrics when its
/// `done` event goes by, so no route can forget to.
pub struct ChatStream {
    inner: Streaming<ChatEvent>,
    metrics: Arc<Metrics>,
}

impl ChatStream {
    /// The next event, as `tonic::Streaming::message` gives it.
    pub async fn message(&mut self) -> Result<Option<ChatEvent>, tonic::Status> {
        let event = self.inner.message().await?;
        if let Some(ChatEvent {
            event: Some(chat_event::Event::Done(done)),
        }) = &event
        {
            self.metrics.observe_reply(done);
        }
        Ok(event)
    }
}
