//! The validation rules as data: valid batches, and invalid ones with the JSON path and message
//! fragment the emulator must report, plus whether the official JSON Schema rejects them too.

use serde_json::{Value, json};

use crate::common::valid_batch;

pub struct Invalid {
    pub name: &'static str,
    pub mutate: fn(&mut Value),
    /// Exact JSON path the emulator must name.
    pub path: String,
    /// A fragment of the reason.
    pub contains: &'static str,
    /// Whether mParticle's JSON Schema rejects the batch as well. `false` marks the documented
    /// places where the emulator is stricter (service limits, objects required where the schema
    /// forgot `type`).
    pub schema_rejects: bool,
}

fn ev(b: &mut Value) -> &mut Value {
    &mut b["events"][0]
}

fn data(b: &mut Value) -> &mut Value {
    &mut b["events"][0]["data"]
}

fn set_event(b: &mut Value, e: Value) {
    b["events"] = json!([e]);
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

fn remove(v: &mut Value, k: &str) {
    v.as_object_mut().unwrap().remove(k);
}

pub fn invalid() -> Vec<Invalid> {
    macro_rules! case {
        ($name:expr, $path:expr, $contains:expr, $schema:expr, $m:expr) => {
            Invalid { name: $name, mutate: $m, path: ($path).to_string(), contains: $contains, schema_rejects: $schema }
        };
    }
    vec![
        case!("unknown top-level field", "$.foo", "unknown field", true, |b| b["foo"] = json!(1)),
        case!("schema_version", "$.schema_version", "output-only", true, |b| b["schema_version"] = json!(2)),
        case!("environment not in enum", "$.environment", "not an allowed value", true, |b| {
            b["environment"] = json!("staging")
        }),
        case!("environment null", "$.environment", "expected a string", true, |b| b["environment"] = json!(null)),
        case!("events not an array", "$.events", "expected an array or null", true, |b| b["events"] = json!({})),
        case!("event not an object", "$.events[0]", "expected an event object", true, |b| {
            b["events"] = json!(["click"])
        }),
        case!("event_type missing", "$.events[0].event_type", "required field is missing", true, |b| {
            remove(ev(b), "event_type")
        }),
        case!("event_type unknown", "$.events[0].event_type", "not a supported event type", true, |b| {
            ev(b)["event_type"] = json!("pre_attribution")
        }),
        case!("event_type not a string", "$.events[0].event_type", "expected a string", true, |b| {
            ev(b)["event_type"] = json!(7)
        }),
        case!("event data missing", "$.events[0].data", "required field is missing", true, |b| remove(ev(b), "data")),
        case!("custom_event extra field", "$.events[0].foo", "unknown field", true, |b| ev(b)["foo"] = json!(1)),
        case!("event_name missing", "$.events[0].data.event_name", "required field is missing", true, |b| {
            remove(data(b), "event_name")
        }),
        case!("event_name not a string", "$.events[0].data.event_name", "expected a string", true, |b| {
            data(b)["event_name"] = json!(42)
        }),
        case!(
            "custom_event_type missing",
            "$.events[0].data.custom_event_type",
            "required field is missing",
            true,
            |b| { remove(data(b), "custom_event_type") }
        ),
        case!("custom_event_type bogus", "$.events[0].data.custom_event_type", "not an allowed value", true, |b| {
            data(b)["custom_event_type"] = json!("bogus")
        }),
        case!(
            "custom_event_type attribution",
            "$.events[0].data.custom_event_type",
            "not an allowed value",
            true,
            |b| { data(b)["custom_event_type"] = json!("attribution") }
        ),
        case!("timestamp not an integer", "$.events[0].data.timestamp_unixtime_ms", "expected an integer", true, |b| {
            data(b)["timestamp_unixtime_ms"] = json!("yesterday")
        }),
        case!(
            "timestamp with a fraction",
            "$.events[0].data.timestamp_unixtime_ms",
            "expected an integer",
            true,
            |b| { data(b)["timestamp_unixtime_ms"] = json!(1.5) }
        ),
        case!("source_message_id a number", "$.events[0].data.source_message_id", "expected a string", true, |b| {
            data(b)["source_message_id"] = json!(5)
        }),
        case!("session_uuid not a UUID", "$.events[0].data.session_uuid", "not a UUID", true, |b| {
            data(b)["session_uuid"] = json!("abc")
        }),
        case!(
            "event attribute value an object",
            "$.events[0].data.custom_attributes.points",
            "expected a string, number, boolean or null",
            true,
            |b| data(b)["custom_attributes"]["points"] = json!({"a": 1})
        ),
        case!("custom_attributes an array", "$.events[0].data.custom_attributes", "expected an object", true, |b| {
            data(b)["custom_attributes"] = json!(["a"])
        }),
        case!("custom_flags not an object", "$.events[0].data.custom_flags", "expected an object or null", true, |b| {
            data(b)["custom_flags"] = json!("x")
        }),
        case!("user identity unknown key", "$.user_identities.phone", "unknown field", true, |b| {
            b["user_identities"]["phone"] = json!("123")
        }),
        case!(
            "user identity value an object",
            "$.user_identities.email",
            "expected a string, number, boolean or null",
            true,
            |b| b["user_identities"]["email"] = json!({"v": "a@b.c"})
        ),
        case!("user_identities an array", "$.user_identities", "expected an object or null", true, |b| {
            b["user_identities"] = json!([])
        }),
        case!("user attribute value an object", "$.user_attributes.tier", "found an object", true, |b| {
            b["user_attributes"]["tier"] = json!({"level": 1})
        }),
        case!("user attribute list nested", "$.user_attributes.tags[0]", "must be strings", true, |b| {
            b["user_attributes"]["tags"] = json!([["a"]])
        }),
        case!("user_attributes an array", "$.user_attributes", "expected an object or null", true, |b| {
            b["user_attributes"] = json!(["a"])
        }),
        case!(
            "deleted_user_attributes entry a number",
            "$.deleted_user_attributes[0]",
            "expected a string",
            true,
            |b| { b["deleted_user_attributes"] = json!([5]) }
        ),
        case!("mpid a string", "$.mpid", "expected an integer", true, |b| b["mpid"] = json!("abc")),
        case!("ip not an address", "$.ip", "not an IPv4 or IPv6 address", true, |b| b["ip"] = json!("999.1.1.1")),
        case!("ip a number", "$.ip", "expected an IPv4 or IPv6 address", true, |b| b["ip"] = json!(5)),
        case!("mp_deviceid not a UUID", "$.mp_deviceid", "not a UUID", true, |b| b["mp_deviceid"] = json!("device-1")),
        case!("source_info without channel", "$.source_info.channel", "required field is missing", true, |b| {
            b["source_info"] = json!({"partner": "x"})
        }),
        case!("source_info bad channel", "$.source_info.channel", "not an allowed value", true, |b| {
            b["source_info"] = json!({"channel": "carrier_pigeon"})
        }),
        case!(
            "consent purpose without consented",
            "$.consent_state.gdpr.marketing.consented",
            "required field is missing",
            true,
            |b| b["consent_state"] = json!({"gdpr": {"marketing": {"timestamp_unixtime_ms": 1}}})
        ),
        case!("consent_state unknown regulation", "$.consent_state.lgpd", "unknown field", true, |b| {
            b["consent_state"] = json!({"lgpd": {}})
        }),
        case!("device platform unknown", "$.device_info.platform", "not an allowed value", true, |b| {
            b["device_info"] = json!({"platform": "Windows"})
        }),
        case!("device_info unknown field", "$.device_info.colour", "unknown field", true, |b| {
            b["device_info"] = json!({"colour": "red"})
        }),
        case!("data plan without plan_id", "$.context.data_plan.plan_id", "required field is missing", true, |b| {
            b["context"] = json!({"data_plan": {"plan_version": 1}})
        }),
        case!("location without longitude", "$.context.location.longitude", "required field is missing", true, |b| {
            b["context"] = json!({"location": {"latitude": 47.5}})
        }),
        case!("batch_id a float", "$.batch_id", "expected an integer", true, |b| b["batch_id"] = json!(1.25)),
        case!(
            "screen_view without screen_name",
            "$.events[0].data.screen_name",
            "required field is missing",
            true,
            |b| { set_event(b, json!({"event_type": "screen_view", "data": {}})) }
        ),
        case!("commerce action bogus", "$.events[0].data.product_action.action", "not an allowed value", true, |b| {
            set_event(b, json!({"event_type": "commerce_event", "data": {"product_action": {"action": "steal"}}}))
        }),
        case!(
            "commerce action missing",
            "$.events[0].data.product_action.action",
            "required field is missing",
            true,
            |b| {
                set_event(b, json!({"event_type": "commerce_event", "data": {"product_action": {"total_amount": 3}}}))
            }
        ),
        case!(
            "commerce product id a number",
            "$.events[0].data.product_action.products[0].id",
            "expected a string",
            true,
            |b| set_event(
                b,
                json!({"event_type": "commerce_event",
                       "data": {"product_action": {"action": "purchase", "products": [{"id": 5}]}}})
            )
        ),
        case!(
            "commerce custom_event_type bogus",
            "$.events[0].data.custom_event_type",
            "not an allowed value",
            true,
            |b| set_event(b, json!({"event_type": "commerce_event", "data": {"custom_event_type": "bogus"}}))
        ),
        case!("user_identity_change without old", "$.events[0].data.old", "required field is missing", true, |b| {
            set_event(
                b,
                json!({"event_type": "user_identity_change", "data": {"new":
                    {"identity_type": "email", "identity": "a@b.c", "timestamp_unixtime_ms": 1}}}),
            )
        }),
        case!("identity_type unknown", "$.events[0].data.new.identity_type", "not an allowed value", true, |b| {
            set_event(
                b,
                json!({"event_type": "user_identity_change", "data": {"old": null, "new":
                    {"identity_type": "phone", "identity": "1", "timestamp_unixtime_ms": 1}}}),
            )
        }),
        case!(
            "application_transition_type bogus",
            "$.events[0].data.application_transition_type",
            "not an allowed value",
            true,
            |b| set_event(
                b,
                json!({"event_type": "application_state_transition",
                       "data": {"application_transition_type": "application_crashed"}})
            )
        ),
        case!(
            "opt_out without is_opted_out",
            "$.events[0].data.is_opted_out",
            "required field is missing",
            true,
            |b| { set_event(b, json!({"event_type": "opt_out", "data": {}})) }
        ),
        case!("breadcrumb without label", "$.events[0].data.label", "required field is missing", true, |b| {
            set_event(b, json!({"event_type": "breadcrumb", "data": {}}))
        }),
        case!("second event invalid", "$.events[1].data.event_name", "required field is missing", true, |b| {
            let second = json!({"event_type": "custom_event", "data": {"custom_event_type": "other"}});
            b["events"].as_array_mut().unwrap().push(second);
        }),
        // Stricter than the schema: objects required where the schema has no `type`.
        case!("event data a string", "$.events[0].data", "expected an object", false, |b| {
            ev(b)["data"] = json!("x")
        }),
        case!("device_info a string", "$.device_info", "expected an object or null", false, |b| {
            b["device_info"] = json!("iPhone")
        }),
        // Documented service limits, which the schema does not encode.
        case!("event name over 256 characters", "$.events[0].data.event_name", "257 characters", false, |b| {
            data(b)["event_name"] = json!(long(257))
        }),
        case!("screen name over 256 characters", "$.events[0].data.screen_name", "257 characters", false, |b| {
            set_event(b, json!({"event_type": "screen_view", "data": {"screen_name": long(257)}}))
        }),
        case!(
            "event attribute name over 256 characters",
            format!("$.events[0].data.custom_attributes.{}", long(257)),
            "attribute name is 257 characters",
            false,
            |b| data(b)["custom_attributes"][long(257)] = json!("v")
        ),
        case!(
            "event attribute value over 4096 characters",
            "$.events[0].data.custom_attributes.points",
            "4097 characters",
            false,
            |b| data(b)["custom_attributes"]["points"] = json!(long(4097))
        ),
        case!("more than 100 event attributes", "$.events[0].data.custom_attributes", "101 attributes", false, |b| {
            data(b)["custom_attributes"] = (0..101).map(|i| (format!("a{i}"), json!("v"))).collect();
        }),
        case!("more than 100 user attributes", "$.user_attributes", "101 user attributes", false, |b| {
            b["user_attributes"] = (0..101).map(|i| (format!("u{i}"), json!("v"))).collect();
        }),
        case!(
            "user attribute name over 256 characters",
            format!("$.user_attributes.{}", long(257)),
            "257 characters",
            false,
            |b| b["user_attributes"][long(257)] = json!("v")
        ),
        case!("user attribute value over 4096 characters", "$.user_attributes.tier", "4097 characters", false, |b| {
            b["user_attributes"]["tier"] = json!(long(4097))
        }),
        case!("user attribute list over 1000 entries", "$.user_attributes.tags", "1001 entries", false, |b| {
            b["user_attributes"]["tags"] = json!(vec!["t"; 1001])
        }),
        case!(
            "user attribute list entry over 512 characters",
            "$.user_attributes.tags[1]",
            "513 characters",
            false,
            |b| { b["user_attributes"]["tags"] = json!(["ok", long(513)]) }
        ),
        case!("batch over 128 KB", "$", "bytes when serialized", false, |b| {
            b["user_attributes"] = (0..40).map(|i| (format!("u{i}"), json!(long(4000)))).collect();
        }),
    ]
}

/// Valid batches: the base batch, boundary values, one minimal event of every type, and more.
pub fn valid() -> Vec<(&'static str, Value)> {
    let mut out = vec![("base batch", valid_batch())];
    let mut with = |name: &'static str, f: &dyn Fn(&mut Value)| {
        let mut b = valid_batch();
        f(&mut b);
        out.push((name, b));
    };
    with("events null", &|b| b["events"] = json!(null));
    with("no events, production", &|b| {
        remove(b, "events");
        b["environment"] = json!("production");
    });
    with("no environment", &|b| remove(b, "environment"));
    with("numeric source_request_id", &|b| b["source_request_id"] = json!(12345));
    with("ipv4", &|b| b["ip"] = json!("203.0.113.7"));
    with("ipv6", &|b| b["ip"] = json!("2001:db8::1"));
    with("mpid and batch metadata", &|b| {
        b["mpid"] = json!(-7_636_538_281_262_557_000_i64);
        b["timestamp_unixtime_ms"] = json!(1_558_342_842_934_i64);
        b["mp_deviceid"] = json!("3fb44a79-df2d-446d-acf1-e87eda854ae1");
        b["sdk_version"] = json!("1.0.0");
        b["source_info"] = json!({"channel": "server_to_server", "is_historical": false});
        b["context"] = json!({"data_plan": {"plan_id": "loyalty", "plan_version": 2}});
        b["consent_state"] = json!({"gdpr": {"marketing": {"consented": true, "timestamp_unixtime_ms": 1}}});
        b["integration_attributes"] = json!({"160": {"member_id": "m-1"}});
        b["partner_identities"] = json!({"antavo_id": "a-1"});
    });
    with("every identity type", &|b| {
        b["user_identities"] = mparticle_emulator::validate::IDENTITY_TYPES
            .iter()
            .map(|k| (k.to_string(), json!(format!("{k}-value"))))
            .collect();
    });
    with("identity values may be numbers", &|b| b["user_identities"]["customer_id"] = json!(1234));
    with("event name of 256 characters", &|b| data(b)["event_name"] = json!(long(256)));
    with("attribute value of 4096 characters", &|b| data(b)["custom_attributes"]["points"] = json!(long(4096)));
    with("attribute values may be numbers and booleans", &|b| {
        data(b)["custom_attributes"] = json!({"points": 100, "first": true, "ratio": 0.5, "none": null})
    });
    with("100 event attributes", &|b| {
        data(b)["custom_attributes"] = (0..100).map(|i| (format!("a{i}"), json!("v"))).collect();
    });
    with("100 user attributes", &|b| {
        b["user_attributes"] = (0..100).map(|i| (format!("u{i}"), json!("v"))).collect();
    });
    with("user attribute list of 1000 entries", &|b| b["user_attributes"]["tags"] = json!(vec!["t"; 1000]));
    with("user attribute list entry of 512 characters", &|b| b["user_attributes"]["tags"] = json!([long(512)]));
    with("reserved attributes in both spellings", &|b| {
        b["user_attributes"] = json!({"$firstname": "A", "$FirstName": "A", "$Zip": "1", "$age": 30});
    });
    with("commerce custom_event_type attribution", &|b| {
        set_event(b, json!({"event_type": "commerce_event", "data": {"custom_event_type": "attribution"}}))
    });
    with("every event type", &|b| {
        b["events"] = json!([
            {"event_type": "session_start", "data": {"session_uuid": "84e1b361-a282-4adf-8a6d-1d31e6dd5a9e"}},
            {"event_type": "session_end", "data": {"session_duration_ms": 1000}},
            {"event_type": "screen_view", "data": {"screen_name": "Rewards"}},
            {"event_type": "custom_event", "data": {"event_name": "Tier Changed", "custom_event_type": "user_preference",
                                                    "custom_flags": {"flag": "x"}}},
            {"event_type": "crash_report", "data": {"severity": "error", "message": "boom",
                "breadcrumbs": [{"event_type": "breadcrumb", "data": {"label": "before"}}]}},
            {"event_type": "opt_out", "data": {"is_opted_out": true}},
            {"event_type": "first_run", "data": {}},
            {"event_type": "push_registration", "data": {"register": true, "registration_token": "tok"}},
            {"event_type": "application_state_transition", "data": {"application_transition_type": "application_initialized"}},
            {"event_type": "push_message", "data": {"push_message_token": "t", "push_message_type": "received",
                                                    "push_notification_payload": "{}"}},
            {"event_type": "network_performance", "data": {"url": "https://example.com/", "response_code": 200}},
            {"event_type": "breadcrumb", "data": {"label": "here"}},
            {"event_type": "profile", "data": {"previous_mpid": 0, "current_mpid": 1, "profile_event_type": "login"}},
            {"event_type": "commerce_event", "data": {"currency_code": "EUR", "event_name": "Purchase",
                "custom_event_type": "purchase",
                "product_action": {"action": "purchase", "transaction_id": "t-1", "total_amount": 10.5,
                    "products": [{"id": "sku-1", "name": "Mug", "price": 10.5, "quantity": 1,
                                  "custom_attributes": {"colour": "blue"}}]}}},
            {"event_type": "commerce_event", "data": {"promotion_action": {"action": "view",
                "promotions": [{"id": "p1", "name": "Double points"}]}}},
            {"event_type": "commerce_event", "data": {"product_impressions": [
                {"product_impression_list": "Rewards", "products": [{"id": "r1", "name": "Gift"}]}]}},
            {"event_type": "user_attribute_change", "data": {"user_attribute_name": "tier", "new": "gold", "old": ["a"]}},
            {"event_type": "user_identity_change", "data": {"old": null,
                "new": {"identity_type": "email", "identity": "a@b.c", "timestamp_unixtime_ms": 1}}},
            {"event_type": "uninstall", "data": {}}
        ])
    });
    out
}
