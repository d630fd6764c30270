//! The daemon's core, independent of gRPC: the resident model, admission
//! (a fixed number of generation slots and a bounded wait queue), the
//! sessions that carry K/V caches between chat turns, and the counters that
//! `Stats` reports.
//!
//! Generations run on blocking threads, each in its own slot; slots run at
//! the same time and share the kernel thread pool, so several chats make
//! progress together instead of waiting for each other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use qins_engine::{
    Backend, ChatModel, Device, EngineError, Finished, GenerationEvent, GenerationRequest, Prompt,
    RequestOptions, Session,
};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Context limit of every session, in tokens.
    pub context: usize,
    /// Generations running at once.
    pub max_active: usize,
    /// Requests allowed to wait for a slot; beyond that they are refused.
    pub max_queued: usize,
    /// Conversations whose K/V cache is kept between turns (least recently
    /// used ones are dropped first).
    pub max_sessions: usize,
    pub models_dir: PathBuf,
    /// Where models load, at startup and through LoadModel (`--device`).
    pub device: Device,
    /// Lookup decoding for requests that do not say (`--lookup`).
    pub lookup: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            context: 4096,
            max_active: 2,
            max_queued: 8,
            max_sessions: 4,
            models_dir: PathBuf::from("models"),
            device: Device::Cpu,
            lookup: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("no model is loaded; load one with `qins load NAME` (see `qins models`)")]
    NoModel,
    #[error(
        "qinsd is busy: {active} replies running and {queued} waiting (the queue holds {max_queued}); try again shortly"
    )]
    Busy {
        active: usize,
        queued: usize,
        max_queued: usize,
    },
    #[error("qinsd is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A chat request checked against the resident model and tokenized.
pub struct PreparedChat {
    model: Arc<ChatModel>,
    model_epoch: u64,
    request: GenerationRequest,
    session_id: Option<String>,
}

impl PreparedChat {
    pub fn model_name(&self) -> &str {
        self.model.name()
    }

    pub fn prompt_tokens(&self) -> usize {
        self.request.prompt_tokens.len()
    }
}

/// One input of an embedding request.
#[derive(Clone, Debug)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// An embedding request's result.
#[derive(Clone, Debug)]
pub struct Embedded {
    /// One unit vector per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens embedded, all inputs together.
    pub prompt_tokens: usize,
    pub model: String,
    pub dimensions: usize,
}

/// A generation slot; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    scheduler: Arc<Scheduler>,
    pub waited: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.scheduler.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counters for `Stats`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub requests_served: u64,
    pub tokens_generated: u64,
    pub last_tokens_per_second: f64,
    pub average_tokens_per_second: f64,
    pub active: usize,
    pub queued: usize,
    pub kv_cache_bytes: u64,
    /// Lookup decoding: tokens drafted and accepted, all replies together.
    pub draft_tokens: u64,
    pub accepted_draft_tokens: u64,
}

#[derive(Default)]
struct Throughput {
    decode_tokens: u64,
    decode_seconds: f64,
    last_tokens_per_second: f64,
}

struct StoredSession {
    session: Session<Backend>,
    model_epoch: u64,
    last_used: Instant,
}

pub struct Scheduler {
    config: SchedulerConfig,
    model: RwLock<Option<Arc<ChatModel>>>,
    /// Bumped on every load/unload: sessions of an older model are stale.
    model_epoch: AtomicU64,
    sessions: Mutex<HashMap<String, StoredSession>>,
    /// Caches of finished requests without a session id, reused by the next
    /// ones (at most one per slot): allocating a context-sized cache per
    /// request made RSS jump in cache-sized steps.
    spare: Mutex<Vec<StoredSession>>,
    slots: Arc<Semaphore>,
    /// Generations running; shared with each one, which drafts only while
    /// it runs alone (see TECHNICAL_SPEC, Lookup decoding).
    active: Arc<AtomicUsize>,
    queued: AtomicUsize,
    /// Cancel flags of the running generations, raised all at once on shutdown.
    running: Mutex<HashMap<u64, Arc<AtomicBool>>>,
    next_run_id: AtomicU64,
    shutting_down: AtomicBool,
    requests_served: AtomicU64,
    tokens_generated: AtomicU64,
    draft_tokens: AtomicU64,
    accepted_draft_tokens: AtomicU64,
    throughput: Mutex<Throughput>,
    started: Instant,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.max_active.max(1))),
            config,
            model: RwLock::new(None),
            model_epoch: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            spare: Mutex::new(Vec::new()),
            active: Arc::new(AtomicUsize::new(0)),
            queued: AtomicUsize::new(0),
            running: Mutex::new(HashMap::new()),
            next_run_id: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            requests_served: AtomicU64::new(0),
            tokens_generated: AtomicU64::new(0),
            draft_tokens: AtomicU64::new(0),
            accepted_draft_tokens: AtomicU64::new(0),
            throughput: Mutex::new(Throughput::default()),
            started: Instant::now(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn model(&self) -> Option<Arc<ChatModel>> {
        self.model
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `model` the resident one; requests already running finish on
    /// the previous model, cached sessions are dropped.
    pub fn set_model(&self, model: Option<Arc<ChatModel>>) -> Option<Arc<ChatModel>> {
        let mut slot = self.model.write().unwrap_or_else(PoisonError::into_inner);
        self.model_epoch.fetch_add(1, Ordering::SeqCst);
        self.lock_sessions().clear();
        self.lock_spare().clear();
        std::mem::replace(&mut *slot, model)
    }

    /// Validates and tokenizes a chat request (or a raw completion prompt)
    /// against the resident model. CPU work (template, tokenizer): call it
    /// off the async threads.
    pub fn prepare_chat(
        &self,
        prompt: &Prompt,
        options: &RequestOptions,
        session_id: Option<String>,
    ) -> Result<PreparedChat, SchedulerError> {
        let model = self.model().ok_or(SchedulerError::NoModel)?;
        let model_epoch = self.model_epoch.load(Ordering::SeqCst);
        let options = RequestOptions {
            // The daemon's --lookup off turns the default off; on leaves it to
            // the engine's rule (qins_engine::lookup_mode).
            lookup: options.lookup.or((!self.config.lookup).then_some(false)),
            ..options.clone()
        };
        let mut request = model.request_for(prompt, &options)?;
        request.active_generations = Some(Arc::clone(&self.active));
        if request.prompt_tokens.len() >= self.config.context {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: request.prompt_tokens.len(),
                context: self.config.context,
            }
            .into());
        }
        Ok(PreparedChat {
            model,
            model_epoch,
            request,
            session_id,
        })
    }

    /// Waits for a generation slot; refuses at once when the queue is full.
    pub async fn acquire_slot(self: &Arc<Self>) -> Result<Slot, SchedulerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SchedulerError::ShuttingDown);
        }
        let queued_at = Instant::now();
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let queued = self.queued.fetch_add(1, Ordering::SeqCst);
                let _leave_queue = DecrementOnDrop(&self.queued);
                if queued >= self.config.max_queued {
                    return Err(SchedulerError::Busy {
                        active: self.active.load(Ordering::SeqCst),
                        queued,
                        max_queued: self.config.max_queued,
                    });
                }
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| SchedulerError::ShuttingDown)?
            }
        };
        self.active.fetch_add(1, Ordering::SeqCst);
        Ok(Slot {
            _permit: permit,
            scheduler: Arc::clone(self),
            waited: queued_at.elapsed(),
        })
    }

    /// Runs a prepared chat to the end on the calling (blocking) thread,
    /// streaming through `on_event`. `cancel` stops it within one step.
    pub fn run_chat(
        &self,
        _slot: &Slot,
        chat: PreparedChat,
        cancel: Arc<AtomicBool>,
        on_event: impl FnMut(GenerationEvent),
    ) -> Result<Finished, SchedulerError> {
        let run_id = self.next_run_id.fetch_add(1, Ordering::SeqCst);
        self.lock_running().insert(run_id, Arc::clone(&cancel));
        if self.shutting_down.load(Ordering::SeqCst) {
            cancel.store(true, Ordering::SeqCst);
        }
        let mut session = self.take_session(&chat);
        let result = qins_engine::generate(
            chat.model.model(),
            &mut session,
            chat.model.tokenizer(),
            &chat.request,
            &cancel,
            on_event,
        );
        self.lock_running().remove(&run_id);
        match &chat.session_id {
            Some(id) => self.store_session(id.clone(), session, chat.model_epoch),
            None => self.keep_spare(session, chat.model_epoch),
        }
        let finished = result?;
        self.record(&finished);
        Ok(finished)
    }

    /// Embeds `inputs` (text, tokenized without a chat template, or token
    /// ids) with the resident model on the calling (blocking) thread, in
    /// `slot` so that it shares the machine with chats like one more chat.
    /// An input longer than the context is refused, or cut to it
    /// (`truncate`).
    pub fn run_embed(
        &self,
        _slot: &Slot,
        inputs: &[EmbedInput],
        truncate: bool,
        cancel: Arc<AtomicBool>,
    ) -> Result<Embedded, SchedulerError> {
        let model = self.model().ok_or(SchedulerError::NoModel)?;
        if inputs.is_empty() {
            return Err(EngineError::InvalidRequest("no inputs to embed".into()).into());
        }
        let context = self.config.context;
        let mut tokens = Vec::with_capacity(inputs.len());
        for input in inputs {
            let mut ids = match input {
                EmbedInput::Text(text) => model.raw_prompt_tokens(text)?,
                EmbedInput::Tokens(ids) => ids.clone(),
            };
            if truncate {
                ids.truncate(context);
            }
            tokens.push(ids);
        }
        let run_id = self.next_run_id.fetch_add(1, Ordering::SeqCst);
        self.lock_running().insert(run_id, Arc::clone(&cancel));
        if self.shutting_down.load(Ordering::SeqCst) {
            cancel.store(true, Ordering::SeqCst);
        }
        let result = qins_engine::embed(model.model(), &tokens, context, &cancel);
        self.lock_running().remove(&run_id);
        Ok(Embedded {
            vectors: result?,
            prompt_tokens: tokens.iter().map(Vec::len).sum(),
            model: model.name().to_string(),
            dimensions: model.header().config.hidden_size,
        })
    }

    /// Cancels every running generation and refuses new ones.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.slots.close();
        for cancel in self.lock_running().values() {
            cancel.store(true, Ordering::SeqCst);
        }
    }

    pub fn counters(&self) -> Counters {
        let throughput = self.lock_throughput();
        let kv_cache_bytes = self
            .lock_sessions()
            .values()
            .chain(self.lock_spare().iter())
            .map(|s| s.session.cache().bytes() as u64)
            .sum();
        Counters {
            requests_served: self.requests_served.load(Ordering::SeqCst),
            tokens_generated: self.tokens_generated.load(Ordering::SeqCst),
            last_tokens_per_second: throughput.last_tokens_per_second,
            average_tokens_per_second: if throughput.decode_seconds > 0.0 {
                throughput.decode_tokens as f64 / throughput.decode_seconds
            } else {
                0.0
            },
            active: self.active.load(Ordering::SeqCst),
            queued: self.queued.load(Ordering::SeqCst),
            kv_cache_bytes,
            draft_tokens: self.draft_tokens.load(Ordering::SeqCst),
            accepted_draft_tokens: self.accepted_draft_tokens.load(Ordering::SeqCst),
        }
    }

    fn take_session(&self, chat: &PreparedChat) -> Session<Backend> {
        let stored = chat
            .session_id
            .as_ref()
            .and_then(|id| self.lock_sessions().remove(id))
            .filter(|s| s.model_epoch == chat.model_epoch);
        if let Some(stored) = stored {
            return stored.session;
        }
        let spare = self.lock_spare().pop();
        match spare.filter(|s| s.model_epoch == chat.model_epoch) {
            Some(mut spare) => {
                spare.session.reset();
                spare.session
            }
            None => Session::new(chat.model.model(), self.config.context),
        }
    }

    fn keep_spare(&self, session: Session<Backend>, model_epoch: u64) {
        let mut spare = self.lock_spare();
        if spare.len() < self.config.max_active
            && model_epoch == self.model_epoch.load(Ordering::SeqCst)
        {
            spare.push(StoredSession {
                session,
                model_epoch,
                last_used: Instant::now(),
            });
        }
    }

    fn store_session(&self, id: String, session: Session<Backend>, model_epoch: u64) {
        if self.config.max_sessions == 0 || model_epoch != self.model_epoch.load(Ordering::SeqCst) {
            return;
        }
        let mut sessions = self.lock_sessions();
        while sessions.len() >= self.config.max_sessions && !sessions.contains_key(&id) {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            let Some(evicted) = oldest.and_then(|key| sessions.remove(&key)) else {
                break;
            };
            // Its cache serves the next new conversation instead of a fresh one.
            self.keep_spare(evicted.session, evicted.model_epoch);
        }
        sessions.insert(
            id,
            StoredSession {
                session,
                model_epoch,
                last_used: Instant::now(),
            },
        );
    }

    fn record(&self, finished: &Finished) {
        self.requests_served.fetch_add(1, Ordering::SeqCst);
        let generated = finished.usage.completion_tokens as u64;
        self.tokens_generated.fetch_add(generated, Ordering::SeqCst);
        self.draft_tokens
            .fetch_add(finished.timings.draft_tokens as u64, Ordering::SeqCst);
        self.accepted_draft_tokens.fetch_add(
            finished.timings.accepted_draft_tokens as u64,
            Ordering::SeqCst,
        );
        let decode_tokens = generated.saturating_sub(1);
        let decode_seconds =
            (finished.timings.total - finished.timings.time_to_first_token).as_secs_f64();
        if decode_tokens > 0 && decode_seconds > 0.0 {
            let mut throughput = self.lock_throughput();
            throughput.decode_tokens += decode_tokens;
            throughput.decode_seconds += decode_seconds;
            throughput.last_tokens_per_second = finished.timings.tokens_per_second;
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredSession>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_spare(&self) -> std::sync::MutexGuard<'_, Vec<StoredSession>> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicBool>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_throughput(&self) -> std::sync::MutexGuard<'_, Throughput> {
        self.throughput
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_is_refused_and_freed_slots_admit_waiters() {
        let scheduler = Scheduler::new(SchedulerConfig {
            max_active: 1,
            max_queued: 1,
            ..SchedulerConfig::default()
        });
        let first = scheduler.acquire_slot().await.unwrap();
        let waiting = {
            let scheduler = Arc::clone(&scheduler);
            tokio::spawn(async move { scheduler.acquire_slot().await.map(|s| s.waited) })
        };
        while scheduler.counters().queued == 0 {
            tokio::task::yield_now().await;
        }
        let refused = scheduler.acquire_slot().await;
        assert!(matches!(
            refused,
            Err(SchedulerError::Busy { queued: 1, .. })
        ));
        assert_eq!(scheduler.counters().active, 1);
        drop(first);
        waiting.await.unwrap().unwrap();
        let counters = scheduler.counters();
        assert_eq!((counters.active, counters.queued), (0, 0));
    }
}
