//! The gRPC service: thin handlers that map `qins.v1` messages onto the
//! [`Scheduler`](crate::scheduler::Scheduler) and the converter, and typed
//! errors onto gRPC status codes.

mod chat;
mod convert;
mod embed;
mod models;
mod stats;
mod status;
mod tool_reply;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use qins_proto::v1::qins_server::Qins;
use qins_proto::v1::{
    ChatEvent, ChatRequest, ConvertEvent, ConvertRequest, EmbedReply, EmbedRequest,
    ListModelsReply, ListModelsRequest, LoadModelReply, LoadModelRequest, StatsReply, StatsRequest,
    UnloadModelReply, UnloadModelRequest,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::scheduler::Scheduler;

pub use qins_proto::v1::qins_server::QinsServer;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Raises `cancel` once the receiving end of `tx` is dropped (the client went
/// away), even while the work sends nothing (a long prefill, a big tensor).
fn cancel_when_dropped<T: Send + 'static>(
    tx: tokio::sync::mpsc::Sender<T>,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tx.closed().await;
        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    })
}

/// A model's recorded chat defaults as `Stats` and `Convert` report them.
fn generation_defaults(
    defaults: &qins_core::container::GenerationDefaults,
) -> qins_proto::v1::GenerationDefaults {
    qins_proto::v1::GenerationDefaults {
        temperature: defaults.temperature,
        top_p: defaults.top_p,
        top_k: defaults.top_k,
        repetition_penalty: defaults.repetition_penalty,
        max_tokens: defaults.max_tokens,
        origin: defaults.origin.clone(),
    }
}

/// What `Stats` reports about the process besides the scheduler's counters.
#[derive(Clone, Debug)]
pub struct DaemonInfo {
    pub device: String,
    pub threads: usize,
    pub started: Instant,
}

#[derive(Clone)]
pub struct QinsService {
    scheduler: Arc<Scheduler>,
    info: DaemonInfo,
}

impl QinsService {
    pub fn new(scheduler: Arc<Scheduler>, info: DaemonInfo) -> Self {
        Self { scheduler, info }
    }
}

#[tonic::async_trait]
impl Qins for QinsService {
    type ChatStream = EventStream<ChatEvent>;
    type ConvertStream = EventStream<ConvertEvent>;

    async fn chat(
        &self,
        request: Request<ChatRequest>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        chat::chat(&self.scheduler, request.into_inner()).await
    }

    async fn convert(
        &self,
        request: Request<ConvertRequest>,
    ) -> Result<Response<Self::ConvertStream>, Status> {
        convert::convert(self, request.into_inner()).await
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        Ok(Response::new(stats::stats(&self.scheduler, &self.info)))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsReply>, Status> {
        models::list(&self.scheduler).await.map(Response::new)
    }

    async fn load_model(
        &self,
        request: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelReply>, Status> {
        models::load(&self.scheduler, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn unload_model(
        &self,
        _request: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelReply>, Status> {
        Ok(Response::new(models::unload(&self.scheduler)))
    }

    async fn embed(&self, request: Request<EmbedRequest>) -> Result<Response<EmbedReply>, Status> {
        embed::embed(&self.scheduler, request.into_inner())
            .await
            .map(Response::new)
    }
}
