//! Which events go to the webhook: the project filter (the topic carries
//! every project's events) and the old app's allow-list of event names.
//! Filtered events count as done for offsets; the caller counts them by reason.

use std::collections::HashSet;

use crate::config::Config;
use crate::event::decode::EventMeta;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    allowed_events: HashSet<String>,
    project_token: Option<String>,
    team_id: Option<i64>,
}

/// Why an event is not delivered. The string is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Another project's token.
    Project,
    /// Another team id, or no team id while a team filter is set.
    Team,
    /// Not in `ALLOWED_EVENT_TYPES`.
    EventName,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::Project => "project_token",
            Skip::Team => "team_id",
            Skip::EventName => "event_name",
        }
    }
}

impl Filter {
    pub fn new(
        allowed_events: &[String],
        project_token: Option<String>,
        team_id: Option<i64>,
    ) -> Self {
        Filter {
            allowed_events: allowed_events.iter().cloned().collect(),
            project_token,
            team_id,
        }
    }

    pub fn from_config(config: &Config) -> Self {
        Filter::new(
            &config.allowed_event_types,
            config.project_token.clone(),
            config.team_id,
        )
    }

    /// `Ok(())` to deliver, `Err(skip)` to skip.
    pub fn check(&self, event: &EventMeta) -> Result<(), Skip> {
        if let Some(token) = &self.project_token {
            if event.token.as_deref() != Some(token.as_str()) {
                return Err(Skip::Project);
            }
        }
        if let Some(team_id) = self.team_id {
            if event.team_id != Some(team_id) {
                return Err(Skip::Team);
            }
        }
        if !self.allowed_events.is_empty() && !self.allowed_events.contains(&event.event) {
            return Err(Skip::EventName);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, token: Option<&str>, team_id: Option<i64>) -> EventMeta {
        EventMeta {
            uuid: "u".into(),
            event: name.into(),
            token: token.map(str::to_owned),
            team_id,
        }
    }

    #[test]
    fn an_empty_filter_delivers_everything() {
        let filter = Filter::default();
        assert_eq!(filter.check(&event("anything", None, None)), Ok(()));
    }

    #[test]
    fn the_allow_list_matches_exact_event_names() {
        let filter = Filter::new(&["$pageview".into(), "signed up".into()], None, None);
        assert_eq!(filter.check(&event("$pageview", None, None)), Ok(()));
        assert_eq!(filter.check(&event("signed up", None, None)), Ok(()));
        assert_eq!(
            filter.check(&event("$PAGEVIEW", None, None)),
            Err(Skip::EventName)
        );
        assert_eq!(
            filter.check(&event("$autocapture", None, None)),
            Err(Skip::EventName)
        );
    }

    #[test]
    fn the_project_filter_skips_other_tokens_and_events_without_one() {
        let filter = Filter::new(&[], Some("phc_a".into()), None);
        assert_eq!(filter.check(&event("e", Some("phc_a"), None)), Ok(()));
        assert_eq!(
            filter.check(&event("e", Some("phc_b"), None)),
            Err(Skip::Project)
        );
        assert_eq!(filter.check(&event("e", None, None)), Err(Skip::Project));
    }

    #[test]
    fn the_team_filter_skips_other_teams_and_unknown_teams() {
        let filter = Filter::new(&[], None, Some(2));
        assert_eq!(filter.check(&event("e", None, Some(2))), Ok(()));
        assert_eq!(filter.check(&event("e", None, Some(3))), Err(Skip::Team));
        assert_eq!(filter.check(&event("e", None, None)), Err(Skip::Team));
    }

    #[test]
    fn project_is_checked_before_the_event_name() {
        let filter = Filter::new(&["$pageview".into()], Some("phc_a".into()), None);
        assert_eq!(
            filter.check(&event("$autocapture", Some("phc_b"), None)),
            Err(Skip::Project)
        );
    }
}
