//! Rules that map trace fields to workflow class, tenant, lane and tier names: an
//! ordered list, the first rule whose conditions all hold wins. Written in TOML as
//!
//! ```toml
//! [[rules]]
//! when = [{ field = "agent_role", equals = "planner" }, { field = "input_tokens", min = 8000 }]
//! class = "research"
//! lane = "batch"
//! tier = "large"
//! ```
//!
//! A label the winning rule does not set keeps the record's own value (a span's
//! `workflow_class`, `tenant`, `lane`, `model_tier`), else `None`.

use crate::request::RequestRecord;
use crate::span::SpanRecord;
use crate::workflow::Workflow;
use serde::Deserialize;

/// One condition on a field. All given tests must hold; a missing field fails.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    /// Text equal to this (numbers compare by their decimal text).
    #[serde(default)]
    pub equals: Option<String>,
    /// Text starting with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Number >= min.
    #[serde(default)]
    pub min: Option<f64>,
    /// Number < max.
    #[serde(default)]
    pub max: Option<f64>,
}

/// One rule: conditions (all must hold; none = always) and the labels it assigns.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub when: Vec<Condition>,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub lane: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
}

/// The labels a record gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    pub class: Option<String>,
    pub tenant: Option<String>,
    pub lane: Option<String>,
    pub tier: Option<String>,
    /// Index of the rule that matched, if any.
    pub rule: Option<usize>,
}

/// A field value seen by rules.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue<'a> {
    Text(&'a str),
    Num(f64),
}

/// Records whose fields rules can test, and whose own labels are the defaults.
pub trait Fields {
    fn field(&self, name: &str) -> Option<FieldValue<'_>>;
    /// The record's own labels (used where the winning rule sets none).
    fn own_labels(&self) -> Labels {
        Labels::default()
    }
}

impl Fields for RequestRecord {
    /// `input_tokens`, `output_tokens`, `arrival_s`, `prefix_blocks`, `session_id`.
    fn field(&self, name: &str) -> Option<FieldValue<'_>> {
        if name == "session_id" {
            return self.session.as_deref().map(FieldValue::Text);
        }
        Some(FieldValue::Num(match name {
            "input_tokens" => self.input_tokens as f64,
            "output_tokens" => self.output_tokens as f64,
            "arrival_s" => self.arrival_ns as f64 / 1e9,
            "prefix_blocks" => self.block_hashes.as_ref().map_or(0, Vec::len) as f64,
            _ => return None,
        }))
    }
}

impl Fields for SpanRecord {
    /// Every span-log field by its name (`kind` as `llm`/`tool`/`agent`).
    fn field(&self, name: &str) -> Option<FieldValue<'_>> {
        use FieldValue::{Num, Text};
        Some(match name {
            "workflow_id" => Text(&self.workflow_id),
            "span_id" => Text(&self.span_id),
            "parent_span_id" => Text(self.parent_span_id.as_deref()?),
            "kind" => Text(self.kind.name()),
            "agent_role" => Text(&self.agent_role),
            "model_tier" => Text(&self.model_tier),
            "lane" => Text(&self.lane),
            "tenant" => Text(self.tenant.as_deref()?),
            "workflow_class" => Text(self.workflow_class.as_deref()?),
            "input_tokens" => Num(self.input_tokens as f64),
            "output_tokens" => Num(self.output_tokens as f64),
            "cached_tokens" => Num(self.cached_tokens as f64),
            "prefill_ms" => Num(self.prefill_ms),
            "decode_ms" => Num(self.decode_ms),
            "tool_wait_ms" => Num(self.tool_wait_ms),
            "usd_estimate" => Num(self.usd_estimate),
            "attempt" => Num(self.attempt as f64),
            _ => return None,
        })
    }
    fn own_labels(&self) -> Labels {
        Labels {
            class: self.workflow_class.clone(),
            tenant: self.tenant.clone(),
            lane: (!self.lane.is_empty()).then(|| self.lane.clone()),
            tier: (!self.model_tier.is_empty()).then(|| self.model_tier.clone()),
            rule: None,
        }
    }
}

impl Fields for Workflow {
    /// `id`, `workflow_class`, `tenant`, `spans`, `input_tokens`, `output_tokens`
    /// (totals), `root_role` (agent_role of the first root span).
    fn field(&self, name: &str) -> Option<FieldValue<'_>> {
        use FieldValue::{Num, Text};
        let (i, o) = self.token_totals();
        Some(match name {
            "id" | "workflow_id" => Text(&self.id),
            "workflow_class" => Text(self.class.as_deref()?),
            "tenant" => Text(self.tenant.as_deref()?),
            "spans" => Num(self.spans.len() as f64),
            "input_tokens" => Num(i as f64),
            "output_tokens" => Num(o as f64),
            "root_role" => Text(&self.spans.get(*self.roots.first()?)?.agent_role),
            _ => return None,
        })
    }
    fn own_labels(&self) -> Labels {
        Labels {
            class: self.class.clone(),
            tenant: self.tenant.clone(),
            ..Labels::default()
        }
    }
}

impl Condition {
    fn holds(&self, item: &impl Fields) -> bool {
        let Some(v) = item.field(&self.field) else {
            return false;
        };
        let text: std::borrow::Cow<'_, str> = match &v {
            FieldValue::Text(t) => (*t).into(),
            FieldValue::Num(n) => n.to_string().into(),
        };
        if let Some(e) = &self.equals
            && text != e.as_str()
        {
            return false;
        }
        if let Some(p) = &self.prefix
            && !text.starts_with(p.as_str())
        {
            return false;
        }
        if self.min.is_some() || self.max.is_some() {
            let n = match v {
                FieldValue::Num(n) => n,
                FieldValue::Text(t) => match t.parse::<f64>() {
                    Ok(n) => n,
                    Err(_) => return false,
                },
            };
            if self.min.is_some_and(|m| n < m) || self.max.is_some_and(|m| n >= m) {
                return false;
            }
        }
        true
    }
}

/// An ordered rule list; the first match wins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

/// Fields a rule can test on a request-trace row.
pub const REQUEST_FIELDS: &[&str] = &[
    "input_tokens",
    "output_tokens",
    "arrival_s",
    "prefix_blocks",
    "session_id",
];

/// Fields a rule can test on a span, or on a whole workflow of a span trace.
pub const SPAN_FIELDS: &[&str] = &[
    "workflow_id",
    "span_id",
    "parent_span_id",
    "kind",
    "agent_role",
    "model_tier",
    "lane",
    "tenant",
    "workflow_class",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "prefill_ms",
    "decode_ms",
    "tool_wait_ms",
    "usd_estimate",
    "attempt",
    "id",
    "spans",
    "root_role",
];

impl RuleSet {
    /// Checks that every condition tests something, on a field some trace has (a
    /// misspelt field would never match, silently); the message names the rule.
    pub fn new(rules: Vec<Rule>) -> Result<Self, String> {
        for (i, r) in rules.iter().enumerate() {
            for (j, c) in r.when.iter().enumerate() {
                if !REQUEST_FIELDS.contains(&c.field.as_str())
                    && !SPAN_FIELDS.contains(&c.field.as_str())
                {
                    return Err(format!(
                        "rules[{i}].when[{j}].field: no trace has a field `{}`; request traces have {}; span traces {}",
                        c.field,
                        REQUEST_FIELDS.join(", "),
                        SPAN_FIELDS.join(", ")
                    ));
                }
            }
        }
        for (i, r) in rules.iter().enumerate() {
            for (j, c) in r.when.iter().enumerate() {
                if c.equals.is_none() && c.prefix.is_none() && c.min.is_none() && c.max.is_none() {
                    return Err(format!(
                        "rules[{i}].when[{j}] (field `{}`): expected at least one of equals, prefix, min, max",
                        c.field
                    ));
                }
            }
        }
        Ok(RuleSet { rules })
    }

    /// Refuses a condition on a field rows of this kind of trace do not have (a span
    /// field on a request trace, say): it would never match.
    pub fn check_fields(&self, request_trace: bool) -> Result<(), String> {
        let (fields, kind) = if request_trace {
            (REQUEST_FIELDS, "request")
        } else {
            (SPAN_FIELDS, "span")
        };
        for (i, r) in self.rules.iter().enumerate() {
            for (j, c) in r.when.iter().enumerate() {
                if !fields.contains(&c.field.as_str()) {
                    return Err(format!(
                        "rules[{i}].when[{j}].field: rows of a {kind} trace have no field `{}`; they have {}",
                        c.field,
                        fields.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// The labels of `item`: the first matching rule's, defaulted by the item's own.
    pub fn labels(&self, item: &impl Fields) -> Labels {
        let own = item.own_labels();
        for (i, r) in self.rules.iter().enumerate() {
            if r.when.iter().all(|c| c.holds(item)) {
                return Labels {
                    class: r.class.clone().or(own.class),
                    tenant: r.tenant.clone().or(own.tenant),
                    lane: r.lane.clone().or(own.lane),
                    tier: r.tier.clone().or(own.tier),
                    rule: Some(i),
                };
            }
        }
        own
    }

    /// Relabels a workflow in place: its class and tenant from the workflow-level
    /// match, each span's lane and model tier from the span-level match.
    pub fn apply_to_workflow(&self, wf: &mut Workflow) {
        let l = self.labels(&*wf);
        wf.class = l.class;
        wf.tenant = l.tenant;
        for s in &mut wf.spans {
            let l = self.labels(&*s);
            if let Some(lane) = l.lane {
                s.lane = lane;
            }
            if let Some(tier) = l.tier {
                s.model_tier = tier;
            }
            s.workflow_class.clone_from(&wf.class);
            s.tenant.clone_from(&wf.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_defaults_to_own_labels() {
        let rules = RuleSet::new(vec![
            Rule {
                when: vec![Condition {
                    field: "input_tokens".into(),
                    min: Some(8000.0),
                    ..Condition::default()
                }],
                class: Some("long".into()),
                lane: Some("batch".into()),
                ..Rule::default()
            },
            Rule {
                when: vec![],
                class: Some("short".into()),
                ..Rule::default()
            },
        ])
        .unwrap();
        let long = RequestRecord {
            arrival_ns: 0,
            input_tokens: 9000,
            output_tokens: 1,
            block_hashes: None,
            session: None,
            line: 2,
        };
        let short = RequestRecord {
            input_tokens: 10,
            ..long.clone()
        };
        let l = rules.labels(&long);
        assert_eq!(
            (l.class.as_deref(), l.lane.as_deref(), l.rule),
            (Some("long"), Some("batch"), Some(0))
        );
        let s = rules.labels(&short);
        assert_eq!(
            (s.class.as_deref(), s.lane, s.rule),
            (Some("short"), None, Some(1))
        );
        let span = SpanRecord {
            agent_role: "planner".into(),
            model_tier: "large".into(),
            ..SpanRecord::default()
        };
        let only_role = RuleSet::new(vec![Rule {
            when: vec![Condition {
                field: "agent_role".into(),
                prefix: Some("plan".into()),
                ..Condition::default()
            }],
            lane: Some("interactive".into()),
            ..Rule::default()
        }])
        .unwrap();
        let l = only_role.labels(&span);
        assert_eq!(l.lane.as_deref(), Some("interactive"));
        assert_eq!(l.tier.as_deref(), Some("large"));
        assert!(
            RuleSet::new(vec![Rule {
                when: vec![Condition {
                    field: "x".into(),
                    ..Condition::default()
                }],
                ..Rule::default()
            }])
            .is_err()
        );
    }
}
