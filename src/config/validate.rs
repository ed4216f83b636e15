//! After parsing: the checks that involve several options, the secrets
//! given as files folded into the options they set, and clap's refusals
//! rendered as `invalid value for <ENV>: <problem>`.

use std::borrow::Cow;
use std::error::Error as _;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, CommandFactory};
use secrecy::{ExposeSecret, SecretString};

use super::kafka_properties::check_poll_interval;
use super::secret::{choose, SecretFile};
use super::values::Problem;
use super::{bad, Cli, Config, ConfigError, GroupProtocolChoice, InputFormat};

impl Config {
    /// Validates the parsed options together.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let mut c = cli.config;
        if let Some(token) = choose(
            &c.webhook_bearer_token,
            c.webhook_bearer_token_file.as_ref(),
        ) {
            if c.webhook_headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            {
                return Err(bad(
                    "WEBHOOK_BEARER_TOKEN",
                    "WEBHOOK_HEADERS already sets Authorization",
                ));
            }
            let value = SecretString::from(format!("Bearer {}", token.expose_secret()));
            c.webhook_headers.push(("Authorization".into(), value));
        }
        if let Some(password) = choose(&c.kafka_sasl_password, c.kafka_sasl_password_file.as_ref())
        {
            // librdkafka takes it as a plain property; KAFKA_PROPERTIES'
            // printing redacts it.
            c.kafka_properties
                .insert("sasl.password".into(), password.expose_secret().to_owned());
        }
        let inline = c.signing_secret.take().unwrap_or_default();
        c.signing_secret = choose(&inline, c.webhook_signing_secret_file.as_ref());
        // Folded in above: no second copy stays around.
        c.webhook_bearer_token = SecretString::default();
        c.kafka_sasl_password = SecretString::default();
        (c.webhook_bearer_token_file, c.webhook_signing_secret_file) = (None, None);
        c.kafka_sasl_password_file = None;

        if c.topics.matches(&c.dlq_topic) {
            return Err(bad(
                "DLQ_TOPIC",
                format!(
                    "expected a topic other than KAFKA_TOPIC ({}), listed or matched: dead letters would be read again as input",
                    c.topics
                ),
            ));
        }
        if c.topics.matches(&c.state_topic) || c.state_topic == c.dlq_topic {
            return Err(bad(
                "STATE_TOPIC",
                format!(
                    "expected a topic other than KAFKA_TOPIC ({}) and DLQ_TOPIC ({})",
                    c.topics, c.dlq_topic
                ),
            ));
        }
        check_poll_interval(&c.kafka_properties, c.shutdown_timeout)?;
        check_group_protocol(&c)?;
        c.transform = transform(&mut c)?;
        if c.project_token.is_some() && c.input_format == InputFormat::Clickhouse {
            return Err(bad(
                "POSTHOG_PROJECT_TOKEN",
                "clickhouse_events_json messages carry no project token; filter them with POSTHOG_TEAM_ID instead",
            ));
        }
        if c.retry_backoff_max < c.retry_backoff_min {
            return Err(bad(
                "RETRY_BACKOFF_MAX_MS",
                format!(
                    "expected at least RETRY_BACKOFF_MIN_MS ({} ms), got {:?}",
                    c.retry_backoff_min.as_millis(),
                    c.retry_backoff_max.as_millis().to_string()
                ),
            ));
        }
        Ok(c)
    }
}

/// Settings of one group protocol given with the other forced.
fn check_group_protocol(c: &Config) -> Result<(), ConfigError> {
    use super::{classic_only_key, consumer_only_key};
    match c.group_protocol {
        GroupProtocolChoice::Consumer => match classic_only_key(&c.kafka_properties) {
            Some(key) => Err(bad(
                "KAFKA_PROPERTIES",
                format!(
                    "{key} applies to the classic group protocol only, and KAFKA_GROUP_PROTOCOL=consumer: \
                     under the new protocol the brokers set it (group.consumer.session.timeout.ms, \
                     group.consumer.heartbeat.interval.ms)"
                ),
            )),
            None => Ok(()),
        },
        GroupProtocolChoice::Classic => match consumer_only_key(&c.kafka_properties) {
            Some(key) => Err(bad(
                "KAFKA_PROPERTIES",
                format!(
                    "{key} applies to the next-generation group protocol only, and KAFKA_GROUP_PROTOCOL=classic"
                ),
            )),
            None => Ok(()),
        },
        GroupProtocolChoice::Auto => Ok(()),
    }
}

/// The event rules, parsed: a rule that cannot be used stops the start,
/// naming the option, where in it, and why.
fn transform(c: &mut Config) -> Result<super::Transform, ConfigError> {
    use crate::transform::Rules;
    // A salt from its file wins; an explicitly empty one hashes unsalted.
    if let Some(SecretFile(Some(salt))) = c.hash_salt_file.take() {
        // A mounted secret not filled in must not turn into unsalted
        // hashes, which anyone can reverse for guessable values.
        if salt.expose_secret().is_empty() {
            return Err(bad(
                "HASH_SALT_FILE",
                "the file is empty; to hash without a salt on purpose, set HASH_SALT to an empty value instead",
            ));
        }
        c.hash_salt = Some(salt);
    }
    let salt = c.hash_salt.clone();
    let (filters, from_file) = match &c.event_filters_file {
        Some(text) => (Some(text.as_str()), true),
        None => (Some(c.event_filters.as_str()), false),
    };
    let rules = Rules::parse(
        &c.remove_properties,
        &c.keep_properties,
        &c.hash_properties,
        salt,
        filters,
    )
    .map_err(|e| {
        let option = if from_file && e.option == "EVENT_FILTERS" {
            "EVENT_FILTERS_FILE"
        } else {
            e.option
        };
        ConfigError {
            option: Cow::Borrowed(option),
            problem: match &e.at {
                Some(at) => format!("{at}: {}", e.reason),
                None => e.reason.clone(),
            },
        }
    })?;
    Ok(super::Transform(std::sync::Arc::new(rules)))
}

/// A value refused by one of the options' parsers, as `invalid value for
/// <ENV>: <problem>`; None for clap's other errors (missing or unknown
/// options, `--help`), which clap renders itself. Clap's own rendering of
/// a refused value quotes it, and the value may be a secret.
pub fn option_error(e: &clap::Error) -> Option<ConfigError> {
    if e.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let problem = e.source()?.downcast_ref::<Problem>()?;
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.clone(),
        _ => String::new(),
    };
    let mut command = Cli::command();
    command.build(); // An argument's text (`--name <NAME>`) needs it.
    let env = std::iter::once(&command)
        .chain(command.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| a.to_string() == arg)
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    Some(ConfigError {
        option: Cow::Owned(env.unwrap_or(arg)),
        problem: problem.0.clone(),
    })
}

/// `HTTP_ADDR` as given, when the command line asks for `healthcheck`. The
/// probe needs nothing else, and answers 0 or 1 only (Docker reserves 2), so
/// the other options are read as plain text and not checked.
pub fn healthcheck_address() -> Option<String> {
    let lenient = Cli::command().mut_args(|arg| {
        let plain =
            matches!(arg.get_action(), ArgAction::Set) && arg.get_possible_values().is_empty();
        if plain {
            arg.value_parser(clap::builder::ValueParser::string())
        } else {
            arg
        }
    });
    let matches = lenient.try_get_matches().ok()?;
    if matches.subcommand_name() != Some("healthcheck") {
        return None;
    }
    matches
        .try_get_one::<String>("http_addr")
        .ok()
        .flatten()
        .cloned()
}
