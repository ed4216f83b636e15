//! Behaviour taken from the PostHog apps' public source and tests (their
//! expected outcomes, not their code). Expected JavaScript results were
//! computed with node 20 running each app's operation table on the same
//! values; expected hashes with Python's hashlib (see each table).

use secrecy::SecretString;
use serde_json::{json, Value};

use super::*;

const SALT: &str = "s3cret";

fn rules(remove: &str, keep: &str, hash: &str, filters: Option<&str>) -> Rules {
    let salt = (!hash.is_empty()).then(|| SecretString::from(SALT));
    Rules::parse(remove, keep, hash, salt, filters)
        .unwrap_or_else(|e| panic!("rules should parse: {e}"))
}

fn run(rules: &Rules, event: &Value) -> (Option<Value>, Applied) {
    let bytes = serde_json::to_vec(event).expect("serializable");
    let mut out = vec![b'x'; 3];
    let applied = rules.apply(&bytes, &mut out);
    if applied.dropped.is_some() {
        assert!(out.is_empty(), "a dropped event leaves nothing");
        return (None, applied);
    }
    let value = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "output must be JSON ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    });
    (Some(value), applied)
}

/// An event as the connector delivers it.
fn event(properties: Value) -> Value {
    json!({
        "uuid": "018a981f-4b2f-791a-9eb1-67ae5b9ecf84",
        "event": "$pageview",
        "distinct_id": "user-1",
        "team_id": 2,
        "ip": "127.0.0.1",
        "timestamp": "2023-09-15T09:15:02.322Z",
        "properties": properties,
    })
}

fn with(mut event: Value, key: &str, value: Value) -> Value {
    event[key] = value;
    event
}

fn kept(rules: &Rules, event: &Value) -> bool {
    run(rules, event).0.is_some()
}

// ---------------------------------------------------------------- Filter Out

/// The Filter Out app's own tests (index.test.ts in PostHog's
/// legacy-plugins and in PostHog/posthog-filter-out-plugin): flat filters
/// `$host not_contains localhost AND foo gt 10 AND bar is true`,
/// `eventsToDrop: ["to_drop_event"]`.
#[test]
fn filter_out_app_tests_pass() {
    let flat = r#"[
        {"property": "$host", "type": "string", "operator": "not_contains", "value": "localhost"},
        {"property": "foo", "type": "number", "operator": "gt", "value": 10},
        {"property": "bar", "type": "boolean", "operator": "is", "value": true}
    ]"#;
    let with_options = |keep_undefined: &str| {
        format!(
            r#"{{"filters": {flat}, "eventsToDrop": "to_drop_event", "keepUndefinedProperties": "{keep_undefined}"}}"#
        )
    };
    let no = rules("", "", "", Some(&with_options("No")));
    let yes = rules("", "", "", Some(&with_options("Yes")));
    let name = |n: &str, p: Value| with(event(p), "event", json!(n));
    for (what, rules, event, expected) in [
        (
            "satisfies all conditions: passes",
            &no,
            name(
                "test event",
                json!({"$host": "example.com", "foo": 20, "bar": true}),
            ),
            true,
        ),
        (
            "fails one condition: dropped",
            &no,
            name(
                "test event",
                json!({"$host": "localhost:8000", "foo": 20, "bar": true}),
            ),
            false,
        ),
        (
            "fails all: dropped",
            &no,
            name(
                "test event",
                json!({"$host": "localhost:8000", "foo": 5, "bar": false}),
            ),
            false,
        ),
        (
            "in eventsToDrop: dropped",
            &no,
            name(
                "to_drop_event",
                json!({"$host": "example.com", "foo": 20, "bar": true}),
            ),
            false,
        ),
        (
            "a property undefined: dropped",
            &no,
            name("test_event", json!({"foo": 20, "bar": true})),
            false,
        ),
        (
            "undefined but keepUndefinedProperties: passes",
            &yes,
            name("test_event", json!({"foo": 20, "bar": true})),
            true,
        ),
    ] {
        assert_eq!(kept(rules, &event), expected, "{what}");
    }
    assert_eq!(
        run(&no, &name("to_drop_event", json!({}))).1.dropped,
        Some(DropReason::EventName)
    );
    assert_eq!(
        run(&no, &name("x", json!({"foo": 1}))).1.dropped,
        Some(DropReason::NoGroupMatched)
    );

    // "empty filters": only eventsToDrop applies.
    let empty = rules(
        "",
        "",
        "",
        Some(r#"{"filters": [], "eventsToDrop": "foo, bar  ,to_drop_event"}"#),
    );
    assert!(kept(
        &empty,
        &name("test event", json!({"$host": "localhost"}))
    ));
    assert!(!kept(&empty, &name("to_drop_event", json!({}))));
    assert!(
        !kept(&empty, &name("bar", json!({}))),
        "names are trimmed, as the app's setup did"
    );

    // OR between groups, AND within.
    let or = rules(
        "",
        "",
        "",
        Some(
            r#"[[{"property": "$host", "type": "string", "operator": "not_contains", "value": "localhost"},
                 {"property": "foo", "type": "number", "operator": "gt", "value": 10}],
                [{"property": "bar", "type": "boolean", "operator": "is", "value": true}]]"#,
        ),
    );
    assert!(kept(
        &or,
        &event(json!({"$host": "example.com", "foo": 5, "bar": true}))
    ));
    assert!(!kept(
        &or,
        &event(json!({"$host": "localhost:8000", "foo": 5, "bar": false}))
    ));
    assert!(kept(
        &or,
        &event(json!({"$host": "example.com", "foo": 11}))
    ));
}

/// Every operator on values of every type. Columns, in order, are the
/// property's value; each letter is what node 20 gave running the app's
/// operation table: T kept, F dropped, X JavaScript threw (the app failed,
/// PostHog passed the event on: kept, with `filter_error`).
#[test]
fn each_operator_and_type_behaves_as_javascript_does() {
    let props = [
        r#""localhost:8000""#,
        r#""example.com""#,
        r#""""#,
        "20",
        r#""20""#,
        "5",
        r#""9""#,
        "true",
        "false",
        "null",
        r#"[1,"a"]"#,
        r#"["5"]"#,
        r#"{"a":1}"#,
        "1.0",
    ];
    let table: &[(&str, &str, &str, &str)] = &[
        ("string", "is", r#""example.com""#, "FTFFFFFFFFFFFF"),
        ("string", "is_not", r#""example.com""#, "TFTTTTTTTTTTTT"),
        ("string", "is", "20", "FFFTFFFFFFFFFF"),
        ("string", "contains", r#""local""#, "TFFXFXFXXXFFXX"),
        ("string", "not_contains", r#""local""#, "FTTXTXTXXXTTXX"),
        ("string", "contains", r#""a""#, "TTFXFXFXXXTFXX"),
        ("string", "contains", "1", "FFFXFXFXXXTFXX"),
        ("string", "regex", r#""^local""#, "TFFFFFFFFFFFFF"),
        ("string", "not_regex", r#""^local""#, "FTTTTTTTTTTTTT"),
        ("string", "regex", r#""^\\d+$""#, "FFFTTTTFFFFTFT"),
        ("string", "regex", r#""null""#, "FFFFFFFFFTFFFF"),
        ("string", "regex", r#""object""#, "FFFFFFFFFFFFTF"),
        ("number", "gt", "10", "FFFTTFFFFFFFFF"),
        ("number", "gte", "20", "FFFTTFFFFFFFFF"),
        ("number", "lt", "10", "FFTFFTTTTTFTFT"),
        ("number", "lte", "5", "FFTFFTFTTTFTFT"),
        ("number", "eq", "20", "FFFTFFFFFFFFFF"),
        ("number", "neq", "20", "TTTFTTTTTTTTTT"),
        ("number", "gt", r#""10""#, "TTFTTFTFFFFTTF"),
        ("number", "eq", "1", "FFFFFFFFFFFFFT"),
        ("boolean", "is", "true", "FFFFFFFTFFFFFF"),
        ("boolean", "is_not", "true", "TTTTTTTFTTTTTT"),
        ("boolean", "is", "false", "FFFFFFFFTFFFFF"),
    ];
    for (ty, op, value, expected) in table {
        let filters = format!(
            r#"[[{{"property": "p", "type": "{ty}", "operator": "{op}", "value": {value}}}]]"#
        );
        let rules = rules("", "", "", Some(&filters));
        for (prop, letter) in props.iter().zip(expected.chars()) {
            let p: Value = serde_json::from_str(prop).expect("valid");
            let (out, applied) = run(&rules, &event(json!({ "p": p })));
            let got = match (out.is_some(), applied.filter_error) {
                (true, Some(_)) => 'X',
                (true, None) => 'T',
                (false, _) => 'F',
            };
            assert_eq!(got, letter, "{ty} {op} {value} on {prop}");
            if letter == 'X' {
                assert_eq!(
                    applied.filter_error,
                    Some(ConditionRef {
                        group: 1,
                        condition: 1
                    })
                );
            }
        }
        // A missing property fails the condition (keepUndefinedProperties: No).
        assert!(!kept(&rules, &event(json!({}))), "{ty} {op}: missing");
    }
}

#[test]
fn a_throwing_condition_keeps_the_event_only_when_reached() {
    // JavaScript stops at the first false condition of a group and at the
    // first satisfied group: a later throwing condition is never reached.
    let rules = rules(
        "",
        "",
        "",
        Some(
            r#"[[{"property": "a", "type": "string", "operator": "is", "value": "x"},
                 {"property": "n", "type": "string", "operator": "contains", "value": "1"}],
                [{"property": "b", "type": "boolean", "operator": "is", "value": true}]]"#,
        ),
    );
    let (out, applied) = run(&rules, &event(json!({"a": "x", "n": 12})));
    assert!(out.is_some());
    assert_eq!(
        applied.filter_error,
        Some(ConditionRef {
            group: 1,
            condition: 2
        })
    );
    let (out, applied) = run(&rules, &event(json!({"a": "y", "n": 12})));
    assert!(
        out.is_none() && applied.filter_error.is_none(),
        "group 1 stops at a"
    );
    let (out, applied) = run(&rules, &event(json!({"a": "y", "n": 12, "b": true})));
    assert!(out.is_some() && applied.filter_error.is_none());
}

#[test]
fn missing_null_and_repeated_properties() {
    let is_null = rules(
        "",
        "",
        "",
        Some(r#"[{"property": "p", "type": "string", "operator": "is", "value": null}]"#),
    );
    assert!(
        kept(&is_null, &event(json!({"p": null}))),
        "null is a value, not undefined"
    );
    assert!(!kept(&is_null, &event(json!({}))));
    let keep_undefined = rules(
        "",
        "",
        "",
        Some(
            r#"{"filters": [{"property": "p", "type": "number", "operator": "gt", "value": 1}], "keepUndefinedProperties": "Yes"}"#,
        ),
    );
    assert!(kept(&keep_undefined, &event(json!({}))));
    assert!(
        !kept(&keep_undefined, &event(json!({"p": null}))),
        "null > 1 is false"
    );
    // A repeated key: JSON.parse keeps the last value.
    let gt = rules(
        "",
        "",
        "",
        Some(r#"[{"property": "p", "type": "number", "operator": "gt", "value": 1}]"#),
    );
    let text = br#"{"uuid":"u","event":"e","properties":{"p":5,"p":0}}"#;
    assert_eq!(
        gt.apply(text, &mut Vec::new()).dropped,
        Some(DropReason::NoGroupMatched)
    );
    // Filter properties are flat names, as in the app: a dot is part of the name.
    let dotted = rules(
        "",
        "",
        "",
        Some(r#"[{"property": "a.b", "type": "number", "operator": "eq", "value": 1}]"#),
    );
    assert!(kept(&dotted, &event(json!({"a.b": 1}))));
    assert!(!kept(&dotted, &event(json!({"a": {"b": 1}}))));
}

#[test]
fn events_without_properties_are_left_alone_as_the_apps_did() {
    let rules = rules(
        "",
        "",
        "",
        Some(
            r#"{"filters": [{"property": "p", "type": "number", "operator": "gt", "value": 1}], "eventsToDrop": "$pageview", "dropOnProperty": {"property_key": "p"}}"#,
        ),
    );
    let mut e = event(json!({}));
    e.as_object_mut().expect("object").remove("properties");
    assert!(kept(&rules, &e));
    assert!(kept(&rules, &with(e, "properties", Value::Null)));
    assert!(
        !kept(&rules, &event(json!({}))),
        "with properties, $pageview is dropped"
    );
}

#[test]
fn filters_read_values_before_they_are_removed_or_hashed() {
    let rules = rules(
        "internal",
        "",
        "email",
        Some(
            r#"[[{"property": "internal", "type": "boolean", "operator": "is", "value": false},
                  {"property": "email", "type": "string", "operator": "not_contains", "value": "@posthog.com"}]]"#,
        ),
    );
    let (out, applied) = run(&rules, &event(json!({"internal": false, "email": "a@b.c"})));
    assert_eq!(
        out.expect("kept")["properties"],
        json!({"email": sha("a@b.c")})
    );
    assert_eq!((applied.removed, applied.hashed), (1, 1));
    assert!(!kept(
        &rules,
        &event(json!({"internal": false, "email": "me@posthog.com"}))
    ));
}

// ------------------------------------------------------- Drop on Property

/// The Drop Events on Property app: `if (properties[key])` (JavaScript
/// truthiness), then no values: drop; else drop if the value is one of
/// `property_values.split(',')` (strict equality: strings only).
#[test]
fn drop_on_property_follows_the_app() {
    let any = rules(
        "",
        "",
        "",
        Some(r#"{"dropOnProperty": {"property_key": "internal"}}"#),
    );
    let listed = rules(
        "",
        "",
        "",
        Some(
            r#"{"dropOnProperty": [{"property_key": "env", "property_values": "test,staging, dev"}]}"#,
        ),
    );
    for (value, dropped_any, dropped_listed) in [
        (json!(true), true, false),
        (json!("yes"), true, false),
        (json!("0"), true, false),
        (json!(1), true, false),
        (json!([]), true, false),
        (json!({}), true, false),
        (json!(false), false, false),
        (json!(0), false, false),
        (json!(""), false, false),
        (Value::Null, false, false),
        (json!("test"), true, true),
        (json!("staging"), true, true),
        // Not trimmed, as in the app: " dev" is listed, "dev" is not.
        (json!("dev"), true, false),
        (json!(" dev"), true, true),
        (json!("Test"), true, false),
    ] {
        let e = event(json!({"internal": value.clone(), "env": value.clone()}));
        assert_eq!(!kept(&any, &e), dropped_any, "internal = {value}");
        assert_eq!(!kept(&listed, &e), dropped_listed, "env = {value}");
    }
    assert!(kept(&any, &event(json!({}))), "missing: kept");
    assert_eq!(
        run(&listed, &event(json!({"env": "test"}))).1.dropped,
        Some(DropReason::OnProperty { rule: 1 })
    );
}

// ------------------------------------------------------- Property Filter

/// The Property Filter app's own test (index.test.ts): the same list, the
/// same properties, the same result.
#[test]
fn property_filter_app_test_passes() {
    let rules = rules(
        "gender,$set.gender,$set.age,foo.bar.baz.one,nonExisting,$set.$not_in_props,no-such.with-dot",
        "",
        "",
        None,
    );
    let properties = json!({
        "name": "Mr. Hog",
        "gender": "male",
        "age": 12,
        "$set": {"age": 35, "pet": "dog", "firstName": "Post", "gender": "female"},
        "foo": {"bar": {"baz": {"one": "one", "two": "two"}}},
    });
    let (out, applied) = run(&rules, &event(properties));
    assert_eq!(
        out.expect("kept")["properties"],
        json!({
            "name": "Mr. Hog",
            "age": 12,
            "$set": {"pet": "dog", "firstName": "Post"},
            "foo": {"bar": {"baz": {"two": "two"}}},
        })
    );
    assert_eq!(applied.removed, 4);
    // "event properties are empty when no properties are given"
    let (out, _) = run(&rules, &event(json!({})));
    assert_eq!(out.expect("kept")["properties"], json!({}));
}

#[test]
fn ip_removal_sets_the_top_level_ip_to_null() {
    let rules = rules("$ip", "", "", None);
    let (out, applied) = run(
        &rules,
        &event(json!({"$ip": "127.0.0.1", "$browser": "Firefox"})),
    );
    let out = out.expect("kept");
    assert_eq!(
        out["ip"],
        Value::Null,
        "null, as PostHog's Property Filter sets it"
    );
    assert!(
        out.as_object().expect("object").contains_key("ip"),
        "the field stays"
    );
    assert_eq!(out["properties"], json!({"$browser": "Firefox"}));
    assert_eq!(applied.removed, 2);
    // Already null: nothing counted for it.
    let (_, applied) = run(&rules, &with(event(json!({})), "ip", Value::Null));
    assert_eq!(applied.removed, 0);
}

#[test]
fn set_paths_apply_to_the_property_and_the_top_level_copy() {
    let rules = rules("$set.email,$set_once.initial_email", "", "", None);
    let e = with(
        with(
            event(
                json!({"$set": {"email": "a@b.c", "name": "A"}, "$set_once": {"initial_email": "a@b.c"}}),
            ),
            "$set",
            json!({"email": "a@b.c", "plan": "pro"}),
        ),
        "$set_once",
        json!({"initial_email": "a@b.c", "x": 1}),
    );
    let (out, applied) = run(&rules, &e);
    let out = out.expect("kept");
    assert_eq!(out["properties"]["$set"], json!({"name": "A"}));
    assert_eq!(out["properties"]["$set_once"], json!({}));
    assert_eq!(out["$set"], json!({"plan": "pro"}));
    assert_eq!(out["$set_once"], json!({"x": 1}));
    assert_eq!(applied.removed, 4);
}

#[test]
fn person_and_elements_chain_follow_their_paths() {
    let rules = rules("person.properties.email,elements_chain", "", "", None);
    let e = with(
        with(
            event(json!({"a": 1})),
            "person",
            json!({"uuid": "p", "properties": {"email": "x", "plan": "pro"}}),
        ),
        "elements_chain",
        json!("a:text=\"Sign in as alice\""),
    );
    let out = run(&rules, &e).0.expect("kept");
    assert_eq!(
        out["person"],
        json!({"uuid": "p", "properties": {"plan": "pro"}})
    );
    assert!(out.get("elements_chain").is_none());
}

/// A dotted path through a value that is not an object: nothing there to
/// remove, the value is left, the other rules apply, and nothing panics.
#[test]
fn non_objects_on_a_dotted_path_are_left_as_they_are() {
    let rules = rules("$set.email,address.city,tags.0,other", "", "a.b", None);
    for value in [
        json!("a string"),
        json!(12),
        json!(null),
        json!(true),
        json!(["x", {"email": 1}]),
    ] {
        let e =
            event(json!({"$set": value, "address": value, "tags": value, "a": value, "other": 1}));
        let (out, applied) = run(&rules, &e);
        let props = &out.expect("kept")["properties"];
        assert_eq!(props["$set"], value);
        assert_eq!(props["address"], value);
        assert_eq!(props["a"], value, "arrays are not walked into");
        assert!(props.get("other").is_none());
        assert_eq!((applied.removed, applied.hashed), (1, 0));
    }
}

// ------------------------------------------------------------- keep-list

#[test]
fn a_keep_list_lets_only_the_listed_properties_leave() {
    let rules = rules("", "$browser,$current_url,$set.plan,utm_source", "", None);
    let e = with(
        with(
            event(json!({
                "$browser": "Firefox",
                "$current_url": "http://localhost:8000/",
                "$ip": "127.0.0.1",
                "email": "a@b.c",
                "$set": {"plan": "pro", "email": "a@b.c"},
                "$set_once": {"first": 1},
            })),
            "$set",
            json!({"plan": "pro", "email": "a@b.c"}),
        ),
        "person",
        json!({"properties": {"email": "a@b.c"}}),
    );
    let (out, applied) = run(&rules, &e);
    let out = out.expect("kept");
    assert_eq!(
        out,
        json!({
            "uuid": "018a981f-4b2f-791a-9eb1-67ae5b9ecf84",
            "event": "$pageview",
            "distinct_id": "user-1",
            "team_id": 2,
            "ip": null,
            "timestamp": "2023-09-15T09:15:02.322Z",
            "properties": {
                "$browser": "Firefox",
                "$current_url": "http://localhost:8000/",
                "$set": {"plan": "pro"},
            },
            "$set": {"plan": "pro"},
        })
    );
    // $ip, email, $set.email, $set_once (props), ip, $set.email (top), person.
    assert_eq!(applied.removed, 7);
}

#[test]
fn a_keep_list_with_ip_keeps_ip_and_hashed_paths_are_kept() {
    let rules = rules("$set.email", "$ip,$set", "email", None);
    let e = with(
        event(json!({"$ip": "1.2.3.4", "email": "a@b.c", "x": 1, "$set": {"email": "e", "n": 1}})),
        "ip",
        json!("1.2.3.4"),
    );
    let out = run(&rules, &e).0.expect("kept");
    assert_eq!(out["ip"], json!("1.2.3.4"));
    assert_eq!(
        out["properties"],
        json!({"$ip": "1.2.3.4", "email": sha("a@b.c"), "$set": {"n": 1}})
    );
}

#[test]
fn a_kept_path_through_a_non_object_leaves_nothing() {
    let rules = rules("", "address.city", "", None);
    let out = run(&rules, &event(json!({"address": "1 Main St", "x": 1})))
        .0
        .expect("kept");
    assert_eq!(out["properties"], json!({}));
    let out = run(
        &rules,
        &event(json!({"address": {"city": "Paris", "street": "Rue"}})),
    )
    .0
    .expect("kept");
    assert_eq!(out["properties"], json!({"address": {"city": "Paris"}}));
}

// ---------------------------------------------------------------- hashing

/// `sha256Hex(concat(toString(value), salt))`, computed in Python:
/// `hashlib.sha256((value + "s3cret").encode()).hexdigest()`.
fn sha(text: &str) -> String {
    match text {
        "alice@example.com" => "43cf9d49cf7be2467088a1517c0ed6c0424ad824c7a2c743fad269e09bd422be",
        "user-1" => "8df6e53274b763879a568e9287aab20ed09b5c12baeece2502c55a9dfa45e3f9",
        "127.0.0.1" => "608014dd118eadee6d5f2ca1b75b78a55a7f0ede9529c0123db604738ad24ade",
        "42" => "8162c9f21d84099878a6e5a57b44bf3eea93710f87fb41e54fea9a8d618d0702",
        "false" => "de7a46c42250f05e7c35bd704ec534987fe9ca461ce6566b986e93cb40e9f225",
        "1.5" => "f2f0b00a3f037cb43472ad059b97d4cb9f86ef42aebaf88c29912def31078238",
        "[1, 'a']" => "9ecf72b472f457f63777e55550cde0c7eeb213e06e0821ac5ddeb2000bd1069c",
        "{'2': 1, 'b': 'it\\'s'}" => {
            "24344a0f2c8386cb9395ac4497a3badb35b40cd257ed76753bee7fd1f8b4b7e8"
        }
        "héllo✓" => "ab983ba73f9c060845b5f66599f9b5fc67869c1e913e7f61e28797a93eb4aca1",
        "0" => "04affcc0f26b81ac845ec77371c42105964fb560f289da54547512fa4f27bb67",
        "a@b.c" => "48d8369f650e82f30fa906338964d7c4f74912291549fa765190ac85e0b41d10",
        other => panic!("no vector for {other:?}"),
    }
    .to_owned()
}

#[test]
fn hashes_equal_the_pii_hashing_apps_for_the_same_salt() {
    let rules = rules(
        "",
        "",
        "email,n,f,bool,arr,obj,name,zero,empty,nothing,none,$set.email,distinct_id",
        None,
    );
    let props = json!({
        "email": "alice@example.com",
        "n": 42,
        "f": 1.50,
        "bool": false,
        "arr": [1, "a"],
        "obj": {"b": "it's", "2": 1},
        "name": "h\u{e9}llo\u{2713}",
        "zero": 0,
        "empty": "",
        "nothing": null,
        "none": {},
        "$set": {"email": "alice@example.com"},
        "distinct_id": "user-1",
        "kept": "clear",
    });
    let e = with(event(props), "$set", json!({"email": "alice@example.com"}));
    let (out, applied) = run(&rules, &e);
    let out = out.expect("kept");
    let p = &out["properties"];
    for (key, printed) in [
        ("email", "alice@example.com"),
        ("n", "42"),
        ("f", "1.5"),
        ("bool", "false"),
        ("arr", "[1, 'a']"),
        ("obj", "{'2': 1, 'b': 'it\\'s'}"),
        ("name", "héllo✓"),
        ("zero", "0"),
        ("distinct_id", "user-1"),
    ] {
        assert_eq!(p[key], json!(sha(printed)), "{key}");
    }
    assert_eq!(p["$set"]["email"], json!(sha("alice@example.com")));
    assert_eq!(out["$set"]["email"], json!(sha("alice@example.com")));
    assert_eq!(
        out["distinct_id"],
        json!(sha("user-1")),
        "the event's own distinct_id"
    );
    assert_eq!(
        (p["empty"].clone(), p["nothing"].clone(), p["none"].clone()),
        (json!(""), Value::Null, json!({}))
    );
    assert_eq!(p["kept"], json!("clear"));
    assert_eq!(
        applied.hashed, 12,
        "10 in properties, $set.email and distinct_id on top"
    );
    assert_eq!(out["uuid"], json!("018a981f-4b2f-791a-9eb1-67ae5b9ecf84"));
}

/// The vector in PostHog's own test of the "Hash properties" template
/// (hash-properties.template.test.ts, inline snapshot): salt "1234567890",
/// `userid` "105338229", `sha256(data + salt)`.
#[test]
fn the_hash_properties_apps_own_vector() {
    let rules = Rules::parse(
        "",
        "",
        " distinct_id , userid ",
        Some(SecretString::from("1234567890")),
        None,
    )
    .expect("valid");
    let e = with(
        event(json!({"userid": "105338229"})),
        "distinct_id",
        json!("105338229"),
    );
    let out = run(&rules, &e).0.expect("kept");
    let expected = "83f029dcb4f5e8f260f008d71e770627adb92aa050aae0c005adad81cc57747c";
    assert_eq!(out["properties"]["userid"], json!(expected));
    assert_eq!(out["distinct_id"], json!(expected));
}

#[test]
fn hashing_ip_hashes_the_top_level_ip_too_and_an_empty_salt_is_unsalted() {
    let rules = rules("", "", "$ip", None);
    let out = run(&rules, &event(json!({"$ip": "127.0.0.1"})))
        .0
        .expect("kept");
    assert_eq!(out["properties"]["$ip"], json!(sha("127.0.0.1")));
    assert_eq!(out["ip"], json!(sha("127.0.0.1")));
    let unsalted =
        Rules::parse("", "", "email", Some(SecretString::from("")), None).expect("valid");
    let out = run(&unsalted, &event(json!({"email": "alice@example.com"})))
        .0
        .expect("kept");
    // hashlib.sha256(b"alice@example.com").hexdigest()
    assert_eq!(
        out["properties"]["email"],
        json!("ff8d9819fc0e12bf0d24892e45987e249a28dce836a85cad60e28eaaa8c6d976")
    );
    assert!(unsalted
        .describe()
        .iter()
        .any(|(k, v)| k == "hash salt" && v.contains("unsalted")));
}

// --------------------------------------------------------- configuration

#[test]
fn invalid_filter_json_is_refused_with_line_and_column() {
    for (text, at, reason) in [
        (
            "[\n  {\"property\": \"a\",}\n]",
            "line 2, column 20",
            "trailing comma",
        ),
        ("{\"filters\": [}", "line 1, column 14", "expected value"),
        ("[{\"property\": \"a\"", "line 1, column 17", "EOF"),
        (
            "{\"filters\": \"[{]\"}",
            "in \"filters\" (a string holding JSON), line 1, column 3",
            "key must be a string",
        ),
    ] {
        let error = Rules::parse("", "", "", None, Some(text)).expect_err(text);
        assert_eq!(error.option, options::FILTERS);
        assert_eq!(error.at.as_deref(), Some(at), "{text}: {error}");
        assert!(error.reason.contains(reason), "{text}: {error}");
        assert!(error.to_string().starts_with("EVENT_FILTERS: "), "{error}");
    }
}

#[test]
fn unusable_conditions_are_refused_with_group_and_condition() {
    let c = |body: &str| {
        format!("[[{{\"property\": \"p\", \"type\": \"string\", \"operator\": \"is\", \"value\": 1}}], [{{\"property\": \"q\", \"value\": 1, {body}}}]]")
    };
    for (text, at, reason) in [
        (c(r#""type": "string", "operator": "equals""#), "group 2, condition 1", "unknown operator \"equals\" for type \"string\"; expected one of is, is_not, contains, not_contains, regex, not_regex"),
        (c(r#""type": "String", "operator": "is""#), "group 2, condition 1", "unknown type \"String\""),
        (c(r#""type": "number", "operator": "is""#), "group 2, condition 1", "unknown operator \"is\" for type \"number\""),
        (c(r#""type": "string", "operator": "regex", "value": "a(?=b)""#), "group 2, condition 1", "lookahead"),
        (c(r#""operator": "is""#), "group 2, condition 1", "\"type\" is missing"),
        (r#"[{"type": "string", "operator": "is", "value": 1}]"#.to_owned(), "group 1, condition 1", "\"property\" is missing"),
        (r#"[{"property": "p", "type": "string", "operator": "is"}]"#.to_owned(), "group 1, condition 1", "\"value\" is missing"),
        (r#"[[], {"property": "p"}]"#.to_owned(), "group 2", "expected an array of conditions"),
        (r#"[{"property": "p", "type": "string", "operator": "is", "value": 1}, [1]]"#.to_owned(), "group 1, condition 2", "expected an object"),
    ] {
        let error = Rules::parse("", "", "", None, Some(&text)).expect_err(&text);
        assert_eq!(error.at.as_deref(), Some(at), "{text}: {error}");
        assert!(error.reason.contains(reason), "{text}: {error}");
    }
    for (text, reason) in [
        (r#"{"filter": []}"#, "unknown key \"filter\""),
        (
            r#"{"keepUndefinedProperties": "yes"}"#,
            "must be \"Yes\" or \"No\"",
        ),
        (
            r#"{"dropOnProperty": {"property_values": "a"}}"#,
            "\"dropOnProperty\" rule 1: \"property_key\" must be a non-empty string",
        ),
        (
            r#""just a string""#,
            "expected the Filter Out app's filters",
        ),
    ] {
        let error = Rules::parse("", "", "", None, Some(text)).expect_err(text);
        assert!(error.reason.contains(reason), "{text}: {error}");
    }
}

#[test]
fn rule_lists_are_checked_against_each_other() {
    let salt = || Some(SecretString::from(SALT));
    for (remove, keep, hash, option, at, reason) in [
        (
            "uuid",
            "",
            "",
            options::REMOVE,
            "column 1",
            "deduplication key",
        ),
        (
            "",
            "",
            "email, uuid",
            options::HASH,
            "column 8",
            "deduplication key",
        ),
        ("a..b", "", "", options::REMOVE, "column 1", "empty name"),
        ("x, .a", "", "", options::REMOVE, "column 4", "empty name"),
        (
            "email",
            "",
            "email",
            options::HASH,
            "column 1",
            "both removed",
        ),
        (
            "$set",
            "",
            "$set.email",
            options::HASH,
            "column 1",
            "inside $set, which REMOVE_PROPERTIES already removes whole",
        ),
        (
            "$set",
            "$set.email",
            "",
            options::KEEP,
            "column 1",
            "is kept, but REMOVE_PROPERTIES removes $set",
        ),
    ] {
        let error = Rules::parse(remove, keep, hash, salt(), None).expect_err(reason);
        assert_eq!(
            (error.option, error.at.as_deref()),
            (option, Some(at)),
            "{error}"
        );
        assert!(error.reason.contains(reason), "{error}");
    }
    // The keep-list may name the receiver's fields and uuid: harmless.
    assert!(Rules::parse("", "uuid,distinct_id", "", None, None).is_ok());
    // Hashing needs a salt.
    let error = Rules::parse("", "", "email", None, None).expect_err("no salt");
    assert_eq!(error.option, options::SALT);
    // Keep $set but remove a path inside it: fine.
    let rules = Rules::parse("$set.email", "$set", "", None, None).expect("valid");
    let out = run(
        &rules,
        &event(json!({"$set": {"email": "e", "n": 1}, "x": 1})),
    )
    .0
    .expect("kept");
    assert_eq!(out["properties"], json!({"$set": {"n": 1}}));
}

#[test]
fn no_rules_is_empty_and_describe_redacts_the_salt() {
    assert!(Rules::parse("", " , ", "", None, Some("  "))
        .expect("valid")
        .is_empty());
    assert!(Rules::parse("", "", "", None, Some("[]"))
        .expect("valid")
        .is_empty());
    assert!(!Rules::parse("a", "", "", None, None)
        .expect("valid")
        .is_empty());
    let rules = rules(
        "$ip",
        "",
        "email",
        Some(
            r#"{"filters": [[{"property": "p", "type": "number", "operator": "gt", "value": 1}]], "eventsToDrop": "a,b", "dropOnProperty": {"property_key": "internal"}}"#,
        ),
    );
    let text = format!("{:?}", rules.describe());
    assert!(
        !text.contains(SALT) && !format!("{rules:?}").contains(SALT),
        "{text}"
    );
    for expected in [
        "remove",
        "$ip",
        "email",
        "set (redacted)",
        "p number gt 1",
        "a, b",
        "internal is any truthy value",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

// ------------------------------------------------------------ robustness

#[test]
fn untouched_values_leave_byte_for_byte() {
    let rules = rules("b", "", "", None);
    let input = br#"{"uuid":"u","event":"e","team_id":null,"properties":{"a":1.0,"b":2,"c":"\u00e9\n","d":{"x":[1e2, true]}},"timestamp":"t"}"#;
    let mut out = Vec::new();
    rules.apply(input, &mut out);
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        r#"{"uuid":"u","event":"e","team_id":null,"properties":{"a":1.0,"c":"\u00e9\n","d":{"x":[1e2, true]}},"timestamp":"t"}"#
    );
}

#[test]
fn unreadable_input_is_dropped_never_sent_unfiltered() {
    let rules = rules("email", "", "", None);
    for bad in [
        &b""[..],
        b"[]",
        b"{\"a\":",
        b"{\"properties\":{\"email\":\"x\"}",
        b"{} trailing",
        b"\xff",
    ] {
        let mut out = Vec::new();
        assert_eq!(
            rules.apply(bad, &mut out).dropped,
            Some(DropReason::Unreadable),
            "{bad:?}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn huge_and_deeply_nested_properties() {
    let rules = rules(
        "k7,deep.a",
        "",
        "big",
        Some(r#"[{"property": "k99999", "type": "number", "operator": "eq", "value": 99999}]"#),
    );
    let mut props = serde_json::Map::new();
    for i in 0..100_000 {
        props.insert(format!("k{i}"), json!(i));
    }
    props.insert("big".to_owned(), json!("x".repeat(1 << 20)));
    // 120 levels inside the event's 4: within what serde_json reads back.
    let depth = 60;
    let mut nested = String::from("1");
    for _ in 0..depth {
        nested = format!("{{\"n\":[{nested}]}}");
    }
    props.insert(
        "deep".to_owned(),
        json!({"a": 1, "keep": serde_json::from_str::<Value>(&nested).expect("valid")}),
    );
    let (out, applied) = run(&rules, &event(Value::Object(props)));
    let out = out.expect("kept: k99999 == 99999");
    assert_eq!(
        out["properties"].as_object().expect("object").len(),
        100_001
    );
    assert!(out["properties"].get("k7").is_none());
    assert_eq!(out["properties"]["big"].as_str().map(str::len), Some(64));
    assert_eq!((applied.removed, applied.hashed), (2, 1));

    // Nesting far deeper than any parser accepts: skipped, never recursed into.
    let very_deep = format!(
        "{{\"uuid\":\"u\",\"properties\":{{\"k7\":1,\"d\":{}1{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut out = Vec::new();
    let applied = rules.apply(very_deep.as_bytes(), &mut out);
    assert_eq!(applied.dropped, Some(DropReason::NoGroupMatched));
    let keep_all = self::rules("k7", "", "", None);
    keep_all.apply(very_deep.as_bytes(), &mut out);
    assert_eq!(out.len(), very_deep.len() - "\"k7\":1,".len());
}
