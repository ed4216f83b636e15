//! Which events leave at all, in the words of two PostHog apps.
//!
//! **Filter Out** (posthog-filter-out-plugin): the JSON a PostHog user gave
//! it, as it is. Its filters say which events to *keep*: an event is kept
//! when it satisfies every condition of at least one group (AND within a
//! group, OR between groups), and dropped otherwise. The older format, one
//! flat array of conditions, is one group. A condition is
//! `{"property", "type", "operator", "value"}`, read with JavaScript's
//! semantics (`===`, `>` with its conversions, `includes`, `RegExp.test`);
//! the `type` only chooses which operators are allowed:
//!
//! | type    | operators                                            |
//! | ------- | ---------------------------------------------------- |
//! | string  | is, is_not, contains, not_contains, regex, not_regex |
//! | number  | gt, gte, lt, lte, eq, neq                            |
//! | boolean | is, is_not                                           |
//!
//! A property that is missing (not one that is null) satisfies a condition
//! only with `keepUndefinedProperties` "Yes". `eventsToDrop` (a
//! comma-separated list of event names) drops by name first. An event
//! without properties is left alone, as the app left it.
//!
//! Where JavaScript would throw (`contains` on a number, null or object)
//! the app failed for that event and PostHog passed the event on: so does
//! this, and [`super::Applied::filter_error`] names the condition.
//!
//! **Drop Events on Property** (drop-events-on-property-plugin):
//! `{"property_key", "property_values"}`. An event whose property is
//! truthy (not missing, null, false, 0, NaN or "") is dropped when
//! `property_values` is empty, or when the property is a string equal to
//! one of the comma-separated values (split on commas only, not trimmed,
//! as the app did).
//!
//! The option holds either the Filter Out attachment as it is (an array),
//! or an object: `{"filters": <the attachment, or a string holding it>,
//! "eventsToDrop": "a,b", "keepUndefinedProperties": "Yes",
//! "dropOnProperty": {"property_key": "k", "property_values": "v1,v2"}}`
//! (`dropOnProperty` may be an array of such objects, one per app).

use serde_json::Value;

use super::js::{self, Js};
use super::jsregex;
use super::scan::{self, KeySet, Malformed, Span};
use super::{ConditionRef, DropReason, RuleError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Type {
    String,
    Number,
    Boolean,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Number => "number",
            Type::Boolean => "boolean",
        }
    }

    fn operators(self) -> &'static [(&'static str, Op)] {
        match self {
            Type::String => &[
                ("is", Op::Is),
                ("is_not", Op::IsNot),
                ("contains", Op::Contains),
                ("not_contains", Op::NotContains),
                ("regex", Op::Regex),
                ("not_regex", Op::NotRegex),
            ],
            Type::Number => &[
                ("gt", Op::Gt),
                ("gte", Op::Gte),
                ("lt", Op::Lt),
                ("lte", Op::Lte),
                ("eq", Op::Is),
                ("neq", Op::IsNot),
            ],
            Type::Boolean => &[("is", Op::Is), ("is_not", Op::IsNot)],
        }
    }
}

/// What a condition computes; `is`/`eq` are both `===`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Is,
    IsNot,
    Contains,
    NotContains,
    Regex,
    NotRegex,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone)]
pub(super) struct Condition {
    slot: usize,
    property: String,
    ty: Type,
    operator: String,
    op: Op,
    /// The value as configured (for the summary).
    json: Value,
    value: Js<'static>,
    /// `String(value)`, for `includes` on a string.
    value_text: String,
    regex: Option<regex::Regex>,
}

/// A condition's answer; `Throws` is where JavaScript raised a TypeError.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    True,
    False,
    Throws,
}

impl Condition {
    fn answer(
        &self,
        b: &[u8],
        value: Option<Span>,
        keep_undefined: bool,
    ) -> Result<Answer, Malformed> {
        let Some(span) = value else {
            return Ok(if keep_undefined {
                Answer::True
            } else {
                Answer::False
            });
        };
        let a = Js::read(b, span)?;
        let yes = match self.op {
            Op::Is => js::strict_eq(&a, &self.value),
            Op::IsNot => !js::strict_eq(&a, &self.value),
            Op::Contains | Op::NotContains => {
                let found = match &a {
                    Js::Str(s) => s.contains(self.value_text.as_str()),
                    Js::Arr(items) => items.iter().any(|item| js::strict_eq(item, &self.value)),
                    // `x.includes` is not a function.
                    _ => return Ok(Answer::Throws),
                };
                found == (self.op == Op::Contains)
            }
            Op::Regex | Op::NotRegex => {
                let matched = self
                    .regex
                    .as_ref()
                    .is_some_and(|r| r.is_match(&js::to_string(&a)));
                matched == (self.op == Op::Regex)
            }
            Op::Gt => js::gt(&a, &self.value),
            Op::Gte => js::gte(&a, &self.value),
            Op::Lt => js::lt(&a, &self.value),
            Op::Lte => js::lte(&a, &self.value),
        };
        Ok(if yes { Answer::True } else { Answer::False })
    }
}

#[derive(Debug, Clone)]
pub(super) struct DropOnProperty {
    slot: usize,
    key: String,
    /// `None`: any truthy value drops.
    values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Filters {
    groups: Vec<Vec<Condition>>,
    events_to_drop: Vec<String>,
    keep_undefined: bool,
    drop_on_property: Vec<DropOnProperty>,
    /// The property names the rules read, each once; conditions point here.
    slots: Vec<Box<[u8]>>,
    slot_names: KeySet,
    /// The configuration had an empty group, which every event satisfies.
    empty_group: bool,
}

/// What the event's `properties` field was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Props {
    Absent,
    Object,
    /// Null or not an object: the apps leave such an event alone.
    Other,
}

impl Filters {
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.events_to_drop.is_empty() && self.drop_on_property.is_empty()
    }

    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The read properties' names, summarized.
    pub(super) fn names(&self) -> KeySet {
        self.slot_names
    }

    /// The slot of a property the rules read.
    #[inline]
    pub(super) fn slot(&self, key: &[u8]) -> Option<usize> {
        if !self.slot_names.may_hold(key) {
            return None;
        }
        self.slots.iter().position(|s| s.as_ref() == key)
    }

    fn slot_for(&mut self, property: &str) -> usize {
        let key = property.as_bytes();
        match self.slots.iter().position(|s| s.as_ref() == key) {
            Some(i) => i,
            None => {
                self.slots.push(key.into());
                self.slot_names.insert(key);
                self.slots.len() - 1
            }
        }
    }

    /// Decides from the event's name and the last value of each read
    /// property (`values`, by slot).
    pub(super) fn decide(
        &self,
        b: &[u8],
        event_name: Option<Span>,
        props: Props,
        values: &[Option<Span>],
    ) -> Result<(Option<DropReason>, Option<ConditionRef>), Malformed> {
        if props != Props::Object {
            return Ok((None, None));
        }
        let value = |slot: usize| values.get(slot).copied().flatten();
        if !self.events_to_drop.is_empty() {
            if let Some(name) = event_name.filter(|s| b.get(s.0) == Some(&b'"')) {
                let name = scan::string_value(b, name)?;
                if self.events_to_drop.iter().any(|e| *e == name) {
                    return Ok((Some(DropReason::EventName), None));
                }
            }
        }
        let mut error = None;
        if !self.groups.is_empty() {
            let mut kept = false;
            'groups: for (g, group) in self.groups.iter().enumerate() {
                for (c, condition) in group.iter().enumerate() {
                    match condition.answer(b, value(condition.slot), self.keep_undefined)? {
                        Answer::True => {}
                        Answer::False => continue 'groups,
                        Answer::Throws => {
                            error = Some(ConditionRef {
                                group: g + 1,
                                condition: c + 1,
                            });
                            kept = true;
                            break 'groups;
                        }
                    }
                }
                kept = true;
                break;
            }
            if !kept {
                return Ok((Some(DropReason::NoGroupMatched), None));
            }
        }
        for (i, rule) in self.drop_on_property.iter().enumerate() {
            let Some(span) = value(rule.slot) else {
                continue;
            };
            let v = Js::read(b, span)?;
            let truthy = match &v {
                Js::Null => false,
                Js::Bool(t) => *t,
                Js::Num(n) => *n != 0.0 && !n.is_nan(),
                Js::Str(s) => !s.is_empty(),
                Js::Arr(_) | Js::Obj(_) => true,
            };
            let drop = truthy
                && match (&rule.values, &v) {
                    (None, _) => true,
                    (Some(list), Js::Str(s)) => list.iter().any(|x| x == s),
                    (Some(_), _) => false,
                };
            if drop {
                return Ok((Some(DropReason::OnProperty { rule: i + 1 }), error));
            }
        }
        Ok((None, error))
    }

    pub(super) fn describe(&self, out: &mut Vec<(String, String)>) {
        if !self.events_to_drop.is_empty() {
            out.push((
                "filter: events to drop".to_owned(),
                self.events_to_drop.join(", "),
            ));
        }
        if self.empty_group {
            out.push((
                "filter: groups".to_owned(),
                "an empty group: every event is kept (as in the Filter Out app)".to_owned(),
            ));
        }
        for (g, group) in self.groups.iter().enumerate() {
            let conditions: Vec<String> = group
                .iter()
                .map(|c| format!("{} {} {} {}", c.property, c.ty.name(), c.operator, c.json))
                .collect();
            out.push((
                format!("filter: keep if group {}", g + 1),
                conditions.join(" AND "),
            ));
        }
        if !self.groups.is_empty() {
            out.push((
                "filter: missing property".to_owned(),
                if self.keep_undefined {
                    "satisfies the condition (keepUndefinedProperties: Yes)"
                } else {
                    "fails the condition (keepUndefinedProperties: No)"
                }
                .to_owned(),
            ));
        }
        for (i, rule) in self.drop_on_property.iter().enumerate() {
            let what = match &rule.values {
                None => "any truthy value".to_owned(),
                Some(values) => format!("one of {values:?}"),
            };
            out.push((
                format!("filter: drop on property {}", i + 1),
                format!("{} is {what}", rule.key),
            ));
        }
    }
}

/// serde_json's message without its " at line L column C" tail.
fn reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((reason, _)) => reason.to_owned(),
        None => text,
    }
}

fn parse_json(option: &'static str, text: &str, inside: &str) -> Result<Value, RuleError> {
    serde_json::from_str(text).map_err(|e| {
        RuleError::at(
            option,
            format!("{inside}line {}, column {}", e.line(), e.column()),
            format!("invalid JSON: {}", reason(&e)),
        )
    })
}

/// Parses the option's text.
pub(super) fn parse(option: &'static str, text: &str) -> Result<Filters, RuleError> {
    let document = parse_json(option, text, "")?;
    let mut filters = Filters::default();
    let err = |reason: String| RuleError::new(option, reason);
    match &document {
        Value::Array(_) => parse_groups(option, &document, &mut filters)?,
        Value::Object(fields) => {
            for (key, value) in fields {
                match key.as_str() {
                    "filters" => match value {
                        Value::String(inner) => {
                            let inner = parse_json(
                                option,
                                inner,
                                "in \"filters\" (a string holding JSON), ",
                            )?;
                            parse_groups(option, &inner, &mut filters)?;
                        }
                        Value::Null => {}
                        other => parse_groups(option, other, &mut filters)?,
                    },
                    "eventsToDrop" => {
                        filters.events_to_drop = match value {
                            // The app: split on commas, each trimmed.
                            Value::String(list) => list
                                .split(',')
                                .map(str::trim)
                                .filter(|e| !e.is_empty())
                                .map(str::to_owned)
                                .collect(),
                            Value::Array(items) => items
                                .iter()
                                .map(|i| i.as_str().map(str::to_owned))
                                .collect::<Option<Vec<_>>>()
                                .ok_or_else(|| {
                                    err("\"eventsToDrop\" must be a comma-separated string or an array of strings".to_owned())
                                })?,
                            Value::Null => Vec::new(),
                            _ => {
                                return Err(err(
                                    "\"eventsToDrop\" must be a comma-separated string or an array of strings".to_owned(),
                                ))
                            }
                        }
                    }
                    "keepUndefinedProperties" => {
                        filters.keep_undefined = match value {
                            Value::String(s) if s == "Yes" => true,
                            Value::String(s) if s == "No" => false,
                            Value::Bool(b) => *b,
                            Value::Null => false,
                            _ => {
                                return Err(err(format!(
                                    "\"keepUndefinedProperties\" must be \"Yes\" or \"No\", not {value}"
                                )))
                            }
                        }
                    }
                    "dropOnProperty" => {
                        let rules: Vec<&Value> = match value {
                            Value::Array(items) => items.iter().collect(),
                            Value::Null => Vec::new(),
                            other => vec![other],
                        };
                        for (i, rule) in rules.into_iter().enumerate() {
                            let rule = parse_drop_on_property(&mut filters, rule).map_err(|reason| {
                                err(format!("\"dropOnProperty\" rule {}: {reason}", i + 1))
                            })?;
                            filters.drop_on_property.push(rule);
                        }
                    }
                    other => {
                        return Err(err(format!(
                            "unknown key {other:?}; expected \"filters\", \"eventsToDrop\", \"keepUndefinedProperties\" or \"dropOnProperty\""
                        )))
                    }
                }
            }
        }
        _ => {
            return Err(err(
                "expected the Filter Out app's filters (an array) or an object with \"filters\", \"eventsToDrop\", \"keepUndefinedProperties\", \"dropOnProperty\"".to_owned(),
            ))
        }
    }
    if filters.groups.iter().any(Vec::is_empty) {
        // Every event satisfies an empty group: the groups keep everything.
        filters.empty_group = true;
        filters.groups.clear();
    }
    Ok(filters)
}

fn parse_drop_on_property(filters: &mut Filters, rule: &Value) -> Result<DropOnProperty, String> {
    let Value::Object(fields) = rule else {
        return Err("expected an object with \"property_key\" and \"property_values\"".to_owned());
    };
    for key in fields.keys() {
        if key != "property_key" && key != "property_values" {
            return Err(format!(
                "unknown key {key:?}; expected \"property_key\" and \"property_values\""
            ));
        }
    }
    let key = match fields.get("property_key") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err("\"property_key\" must be a non-empty string".to_owned()),
    };
    let values = match fields.get("property_values") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) if v.is_empty() => None,
        // The app splits on commas and trims nothing.
        Some(Value::String(v)) => Some(v.split(',').map(str::to_owned).collect()),
        Some(_) => {
            return Err("\"property_values\" must be a string (comma-separated values)".to_owned())
        }
    };
    Ok(DropOnProperty {
        slot: filters.slot_for(&key),
        key,
        values,
    })
}

/// The groups: an array of arrays of conditions, or (the older format)
/// one array of conditions.
fn parse_groups(
    option: &'static str,
    value: &Value,
    filters: &mut Filters,
) -> Result<(), RuleError> {
    let Value::Array(items) = value else {
        return Err(RuleError::new(
            option,
            format!(
                "the filters must be an array (of groups, or of conditions), not {}",
                kind(value)
            ),
        ));
    };
    let grouped = items.first().is_some_and(Value::is_array);
    let groups: Vec<&[Value]> = if grouped {
        items
            .iter()
            .enumerate()
            .map(|(g, group)| {
                group.as_array().map(Vec::as_slice).ok_or_else(|| {
                    RuleError::at(
                        option,
                        format!("group {}", g + 1),
                        format!(
                            "expected an array of conditions (the first group is one), not {}",
                            kind(group)
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    } else if items.is_empty() {
        Vec::new()
    } else {
        vec![items.as_slice()]
    };
    for (g, group) in groups.iter().enumerate() {
        let mut conditions = Vec::with_capacity(group.len());
        for (c, condition) in group.iter().enumerate() {
            let at = format!("group {}, condition {}", g + 1, c + 1);
            let condition = parse_condition(filters, condition)
                .map_err(|reason| RuleError::at(option, at, reason))?;
            conditions.push(condition);
        }
        filters.groups.push(conditions);
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_condition(filters: &mut Filters, condition: &Value) -> Result<Condition, String> {
    let Value::Object(fields) = condition else {
        return Err(format!(
            "expected an object {{\"property\", \"type\", \"operator\", \"value\"}}, not {}",
            kind(condition)
        ));
    };
    let text = |name: &str| -> Result<&str, String> {
        match fields.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(format!("\"{name}\" must be a string, not {}", kind(other))),
            None => Err(format!("\"{name}\" is missing")),
        }
    };
    let property = text("property")?;
    let for_property = |reason: String| format!("(property {property:?}) {reason}");
    let type_name = text("type").map_err(for_property)?;
    let ty = match type_name {
        "string" => Type::String,
        "number" => Type::Number,
        "boolean" => Type::Boolean,
        other => {
            return Err(for_property(format!(
                "unknown type {other:?}; expected \"string\", \"number\" or \"boolean\""
            )))
        }
    };
    let operator = text("operator").map_err(for_property)?;
    let op = ty
        .operators()
        .iter()
        .find(|(name, _)| *name == operator)
        .map(|(_, op)| *op)
        .ok_or_else(|| {
            let names: Vec<&str> = ty.operators().iter().map(|(n, _)| *n).collect();
            for_property(format!(
                "unknown operator {operator:?} for type {:?}; expected one of {}",
                ty.name(),
                names.join(", ")
            ))
        })?;
    let json = fields
        .get("value")
        .cloned()
        .ok_or_else(|| for_property("\"value\" is missing".to_owned()))?;
    let value = Js::from_json(&json);
    let value_text = js::to_string(&value).into_owned();
    let regex = match op {
        Op::Regex | Op::NotRegex => Some(jsregex::compile(&value_text).map_err(for_property)?),
        _ => None,
    };
    Ok(Condition {
        slot: filters.slot_for(property),
        property: property.to_owned(),
        ty,
        operator: operator.to_owned(),
        op,
        json,
        value,
        value_text,
        regex,
    })
}
