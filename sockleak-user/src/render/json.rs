//! Newline-delimited JSON: one object per line, `type` first.
use serde_json::{Value, json};

use super::Started;
use crate::report::Report;

pub fn started(s: &Started) -> String {
    let mut v = serde_json::to_value(s).expect("serializable");
    tag(&mut v, "started");
    line(&v)
}

pub fn report(r: &Report, final_report: bool) -> String {
    let mut v = serde_json::to_value(r).expect("serializable");
    tag(&mut v, "report");
    v["final"] = json!(final_report);
    line(&v)
}

fn tag(v: &mut Value, kind: &str) {
    // Rebuild so `type` comes first in the line: easier on humans grepping the stream.
    let Value::Object(fields) = std::mem::take(v) else {
        unreachable!()
    };
    let mut tagged = serde_json::Map::new();
    tagged.insert("type".into(), json!(kind));
    tagged.extend(fields);
    *v = Value::Object(tagged);
}

fn line(v: &Value) -> String {
    let mut s = serde_json::to_string(v).expect("serializable");
    s.push('\n');
    s
}
