//! The flows: each supplies the engine with its token request and its cache entries
//! ([`Flow`](super::flow::Flow)), nothing else. They know nothing of caches, flights or L2.

pub(crate) mod client;
pub(crate) mod client_credentials;
pub mod managed_identity;
pub(crate) mod on_behalf_of;
pub(crate) mod refresh_token;
