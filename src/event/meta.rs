//! What the filter needs to know about a decoded event. A file of its own,
//! not in `decode`, so that `fast` (which `decode` calls) needs nothing of
//! `decode`, and the fuzz target can compile it in.

#[derive(Debug, Clone, PartialEq)]
pub struct EventMeta {
    pub uuid: String,
    pub event: String,
    /// The project API key, when the message carries one (captured events).
    pub token: Option<String>,
    pub team_id: Option<i64>,
}
