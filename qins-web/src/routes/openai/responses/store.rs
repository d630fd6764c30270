//! The responses `previous_response_id` can name: the last
//! [`STORED_RESPONSES`] stored ones (`store` true, OpenAI's default), in
//! memory, the least recently used dropped first. Each holds its whole
//! conversation (input and output, without `instructions`), which fitted
//! the model's context when it was answered, so an entry is bounded by what
//! the context holds and the store by this many of them. Nothing survives a
//! restart of qins-web.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use qins_proto::v1::Message;
use serde_json::Value;

/// How many responses are kept.
pub const STORED_RESPONSES: usize = 64;

/// A finished response, as a later one continues it.
#[derive(Debug)]
pub struct Stored {
    /// Every input and output item so far, as qinsd's messages.
    pub conversation: Vec<Message>,
    /// The qinsd session the chain's turns share (its K/V prefix reused).
    pub session_id: String,
    /// The response object, as `GET /v1/responses/{id}` returns it.
    pub response: Value,
}

/// The bounded store (see the module comment).
#[derive(Debug, Default)]
pub struct ResponseStore {
    /// Least recently used first.
    entries: Mutex<VecDeque<(String, Arc<Stored>)>>,
}

impl ResponseStore {
    /// The response called `id`, now the most recently used.
    pub fn get(&self, id: &str) -> Option<Arc<Stored>> {
        let mut entries = self.lock();
        let at = entries.iter().position(|(known, _)| known == id)?;
        let entry = entries.remove(at)?;
        let stored = Arc::clone(&entry.1);
        entries.push_back(entry);
        Some(stored)
    }

    /// Keeps `stored` as `id`, dropping the least recently used beyond the
    /// bound.
    pub fn insert(&self, id: String, stored: Stored) {
        let mut entries = self.lock();
        entries.retain(|(known, _)| *known != id);
        entries.push_back((id, Arc::new(stored)));
        while entries.len() > STORED_RESPONSES {
            entries.pop_front();
        }
    }

    /// Forgets `id`; false when it was not stored.
    pub fn remove(&self, id: &str) -> bool {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|(known, _)| known != id);
        entries.len() != before
    }

    /// The entries; a panic while they were held left them whole (each
    /// change is one call on the deque), so a poisoned lock is taken as is.
    fn lock(&self) -> MutexGuard<'_, VecDeque<(String, Arc<Stored>)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(text: &str) -> Stored {
        Stored {
            conversation: vec![crate::edge::message("user", text)],
            session_id: String::new(),
            response: Value::Null,
        }
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let store = ResponseStore::default();
        for i in 0..STORED_RESPONSES {
            store.insert(format!("resp_{i}"), stored("x"));
        }
        // Using the oldest makes it the newest: resp_1 is dropped instead.
        assert!(store.get("resp_0").is_some());
        store.insert("resp_new".into(), stored("y"));
        assert!(store.get("resp_0").is_some());
        assert!(store.get("resp_1").is_none());
        assert!(store.get("resp_new").is_some());
        assert_eq!(store.lock().len(), STORED_RESPONSES);
    }

    #[test]
    fn removed_responses_are_gone() {
        let store = ResponseStore::default();
        store.insert("resp_a".into(), stored("a"));
        assert!(store.remove("resp_a"));
        assert!(!store.remove("resp_a"));
        assert!(store.get("resp_a").is_none());
    }
}
