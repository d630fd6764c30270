//! What every handler shares: the connection to qinsd, the metrics and the
//! access rules. Routes and middleware depend on this module; `app.rs`
//! builds the state and the router, and nothing depends on `app.rs`.

use std::sync::Arc;

use crate::daemon::Daemon;
use crate::metrics::Metrics;
use crate::routes::openai::responses::store::ResponseStore;

pub struct AppState {
    pub daemon: Daemon,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<String>,
    pub allowed_hosts: Vec<String>,
    pub cors_origins: Vec<String>,
    /// The Responses API's stored responses (`previous_response_id`).
    pub responses: ResponseStore,
}
