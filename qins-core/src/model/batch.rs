//! Batched decode: one-token steps of different sequences that arrive
//! together share one forward pass, so the weights (the whole cost of a
//! decode step) are read once for all of them.
//!
//! There is no scheduler thread. The first caller of a round becomes its
//! leader: it waits (at most [`GATHER_WINDOW`]) for the other sequences that
//! stepped in the previous rounds, takes every waiting step, runs
//! [`block::forward_batch`] on its own thread and hands each caller its
//! logits and cache back. A lone sequence never waits. Callers are told
//! apart by thread: the engine runs each generation on its own thread.
//!
//! The batcher is generic over the backend ([`BlockOps`]): the CPU
//! [`Model`](super::Model) and qins-gpu's GPU model share it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use super::ModelError;
use super::block::{self, BlockOps, SequenceCache};

/// The longest a leader waits for the other recent sequences' steps. Between
/// two steps a sequence only samples and streams (well under a millisecond),
/// so they arrive well inside this; a sequence that has ended costs its
/// former partners this wait until it stops counting as recent.
const GATHER_WINDOW: Duration = Duration::from_millis(4);
/// A sequence that has not stepped for this long no longer counts (a
/// backstop: one missed window already drops it).
const RECENT: Duration = Duration::from_millis(500);

/// Batches the decode steps of a model whose caches are `C` and errors `E`.
pub struct DecodeBatcher<C, E> {
    state: Mutex<State<C, E>>,
    changed: Condvar,
    window: Duration,
}

impl<C, E> Default for DecodeBatcher<C, E> {
    fn default() -> Self {
        Self::with_window(GATHER_WINDOW)
    }
}

struct State<C, E> {
    waiting: Vec<Step<C>>,
    leading: bool,
    finished: HashMap<u64, Outcome<C, E>>,
    next_ticket: u64,
    /// Last step time of each recent caller thread.
    recent: HashMap<ThreadId, Instant>,
    /// Forward passes run and steps they served.
    passes: u64,
    steps: u64,
}

impl<C, E> Default for State<C, E> {
    fn default() -> Self {
        Self {
            waiting: Vec::new(),
            leading: false,
            finished: HashMap::new(),
            next_ticket: 0,
            recent: HashMap::new(),
            passes: 0,
            steps: 0,
        }
    }
}

struct Step<C> {
    ticket: u64,
    thread: ThreadId,
    token: u32,
    cache: C,
}

type Outcome<C, E> = (C, Result<Vec<f32>, E>);

impl<C, E> DecodeBatcher<C, E> {
    /// A batcher whose leaders wait at most `window` for recent sequences
    /// (tests use a long one to make batching deterministic).
    pub fn with_window(window: Duration) -> Self {
        Self {
            state: Mutex::default(),
            changed: Condvar::new(),
            window,
        }
    }
}

impl<C: SequenceCache, E: From<ModelError> + std::fmt::Display + Send> DecodeBatcher<C, E> {
    /// Runs `token` after `cache`'s tokens, batched with whatever other
    /// sequences step at the same time; returns its logits.
    pub fn step<M: BlockOps<Cache = C, Error = E>>(
        &self,
        model: &M,
        token: u32,
        cache: &mut C,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, E> {
        if cancel.load(Ordering::Relaxed) {
            return Err(ModelError::Cancelled.into());
        }
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let thread = std::thread::current().id();
        state.waiting.push(Step {
            ticket,
            thread,
            token,
            cache: std::mem::replace(cache, C::empty()),
        });
        state.recent.insert(thread, Instant::now());
        self.changed.notify_all();
        loop {
            if let Some((returned, result)) = state.finished.remove(&ticket) {
                *cache = returned;
                // The pass itself ignores cancels (it serves several callers);
                // honour ours now that it is done.
                if cancel.load(Ordering::Relaxed) {
                    return Err(ModelError::Cancelled.into());
                }
                return result;
            }
            if state.leading {
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.leading = true;
            state = self.gather(state);
            let steps = std::mem::take(&mut state.waiting);
            state.passes += 1;
            state.steps += steps.len() as u64;
            drop(state);
            let outcomes = self.run(model, steps);
            state = self.lock();
            state.finished.extend(outcomes);
            state.leading = false;
            self.changed.notify_all();
        }
    }

    /// Waits until every recent sequence has a step waiting, or the window
    /// ends; the sequences that missed it stop counting as recent (they
    /// ended, or their client reads slowly) until they step again, so an
    /// ended sequence costs its partners one window, not one per step.
    fn gather<'a>(&'a self, mut state: MutexGuard<'a, State<C, E>>) -> MutexGuard<'a, State<C, E>> {
        let now = Instant::now();
        state.recent.retain(|_, last| now - *last < RECENT);
        let deadline = now + self.window;
        while state.waiting.len() < state.recent.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let State {
                    waiting, recent, ..
                } = &mut *state;
                recent.retain(|thread, _| waiting.iter().any(|step| step.thread == *thread));
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state
    }

    /// One pass over every step that can run; steps that cannot (a full
    /// context, a bad token) get their own error without failing the rest.
    fn run<M: BlockOps<Cache = C, Error = E>>(
        &self,
        model: &M,
        steps: Vec<Step<C>>,
    ) -> Vec<(u64, Outcome<C, E>)> {
        let mut outcomes = Vec::with_capacity(steps.len());
        let mut runnable = Vec::with_capacity(steps.len());
        for step in steps {
            match block::check_step(model.config(), step.token, &step.cache) {
                Ok(()) => runnable.push(step),
                Err(e) => outcomes.push((step.ticket, (step.cache, Err(e.into())))),
            }
        }
        if runnable.is_empty() {
            return outcomes;
        }
        let guard = PanicGuard::<C, E, M> {
            batcher: self,
            model: std::marker::PhantomData,
            tickets: runnable.iter().map(|step| step.ticket).collect(),
        };
        let never = AtomicBool::new(false);
        let mut batch: Vec<(u32, &mut C)> = runnable
            .iter_mut()
            .map(|step| (step.token, &mut step.cache))
            .collect();
        let result = block::forward_batch(model, &mut batch, &never);
        drop(batch);
        std::mem::forget(guard);
        match result {
            Ok(logits) => outcomes.extend(
                runnable
                    .into_iter()
                    .zip(logits)
                    .map(|(step, logits)| (step.ticket, (step.cache, Ok(logits)))),
            ),
            Err(e) => {
                let message = e.to_string();
                outcomes.extend(runnable.into_iter().map(|step| {
                    let error = ModelError::Batch(message.clone()).into();
                    (step.ticket, (step.cache, Err(error)))
                }));
            }
        }
        outcomes
    }

    /// Forward passes run so far and the steps they served.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.passes, state.steps)
    }

    fn lock(&self) -> MutexGuard<'_, State<C, E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Should the pass panic, releases the round: every caller of it gets an
/// error (and an empty cache, its own being lost with the pass) instead of
/// waiting forever, and the next caller can lead.
struct PanicGuard<'a, C: SequenceCache, E: From<ModelError> + std::fmt::Display + Send, M> {
    batcher: &'a DecodeBatcher<C, E>,
    model: std::marker::PhantomData<&'a M>,
    tickets: Vec<u64>,
}

impl<C: SequenceCache, E: From<ModelError> + std::fmt::Display + Send, M> Drop
    for PanicGuard<'_, C, E, M>
{
    fn drop(&mut self) {
        let mut state = self.batcher.lock();
        for &ticket in &self.tickets {
            let error = ModelError::Batch("the batched forward pass panicked".into()).into();
            state.finished.insert(ticket, (C::empty(), Err(error)));
        }
        state.leading = false;
        self.batcher.changed.notify_all();
    }
}
