//! Which namespaces may trace which nodes. A namespace's annotation
//! `observe.tracejob.dev/node-selector` holds a label selector (the syntax of `kubectl get -l`);
//! its TraceJobs run only on nodes whose labels match. A control-plane node runs TraceJobs only
//! from namespaces whose selector names the control-plane label. Namespaces without the
//! annotation may trace every other node, or, with the deny-by-default install option, nothing.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Expression, Selector, SelectorExt};

/// The Namespace annotation that scopes its TraceJobs to nodes.
pub const ANNOTATION: &str = "observe.tracejob.dev/node-selector";
/// The label of control-plane nodes.
pub const CONTROL_PLANE: &str = "node-role.kubernetes.io/control-plane";

/// What namespaces without the annotation may trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Unannotated {
    /// Every node but control-plane nodes.
    Allow,
    /// Nothing.
    Deny,
}

/// Whether a TraceJob of a namespace (its annotation, if any) may run on a node (its labels).
/// Err: why not, for the TraceJob's status.
pub fn allowed(
    annotation: Option<&str>,
    node: &str,
    labels: &BTreeMap<String, String>,
    unannotated: Unannotated,
) -> Result<(), String> {
    let control_plane = labels.contains_key(CONTROL_PLANE);
    let Some(text) = annotation else {
        return match unannotated {
            Unannotated::Deny => Err(format!(
                "this namespace has no {ANNOTATION} annotation, and this cluster lets such namespaces trace no node"
            )),
            Unannotated::Allow if control_plane => Err(format!(
                "node {node} is a control-plane node: only namespaces whose {ANNOTATION} annotation names {CONTROL_PLANE} may trace it"
            )),
            Unannotated::Allow => Ok(()),
        };
    };
    let selector = parse(text).map_err(|e| {
        format!("the namespace's {ANNOTATION} annotation {text:?} is not a label selector: {e}")
    })?;
    if !selector.matches(labels) {
        return Err(format!(
            "node {node} does not match the namespace's {ANNOTATION} annotation ({text})"
        ));
    }
    if control_plane && !names_control_plane(&selector) {
        return Err(format!(
            "node {node} is a control-plane node, and the namespace's {ANNOTATION} annotation ({text}) does not name {CONTROL_PLANE}"
        ));
    }
    Ok(())
}

/// The selector asks for the control-plane label by name (so it matches control-plane nodes on
/// purpose, not by accident).
fn names_control_plane(selector: &Selector) -> bool {
    selector.clone().into_iter().any(|e| match e {
        Expression::Exists(k) | Expression::Equal(k, _) | Expression::In(k, _) => {
            k == CONTROL_PLANE
        }
        _ => false,
    })
}

/// Parses a label selector as `kubectl get -l` takes it: requirements separated by commas, each
/// `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)` or `key notin (a,b)`.
/// The empty selector matches everything.
pub fn parse(text: &str) -> Result<Selector, String> {
    let mut expressions = Vec::new();
    for requirement in split_requirements(text)? {
        let r = requirement.trim();
        if r.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err("an empty requirement".into());
        }
        expressions.push(requirement_of(r)?);
    }
    Ok(expressions.into_iter().collect())
}

/// Splits at the commas that are not inside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced parentheses".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement_of(r: &str) -> Result<Expression, String> {
    if let Some(key) = r.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(key_of(key)?));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((key, set)) = r.split_once(op) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("{r:?}: the values must be in parentheses"))?;
            let values: BTreeSet<String> = inner
                .split(',')
                .map(|v| value_of(v.trim()))
                .collect::<Result<_, _>>()?;
            let key = key_of(key)?;
            return Ok(if notin {
                Expression::NotIn(key, values)
            } else {
                Expression::In(key, values)
            });
        }
    }
    if let Some((key, value)) = r.split_once("!=") {
        return Ok(Expression::NotEqual(key_of(key)?, value_of(value.trim())?));
    }
    if let Some((key, value)) = r.split_once("==").or_else(|| r.split_once('=')) {
        return Ok(Expression::Equal(key_of(key)?, value_of(value.trim())?));
    }
    Ok(Expression::Exists(key_of(r)?))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn key_of(key: &str) -> Result<String, String> {
    let key = key.trim();
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let valid_prefix = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    if valid_name && valid_prefix {
        Ok(key.to_string())
    } else {
        Err(format!("{key:?} is not a label key"))
    }
}

/// A label value: empty, or at most 63 characters of letters, digits, `-`, `_` and `.`, starting
/// and ending with a letter or digit.
fn value_of(value: &str) -> Result<String, String> {
    let valid = value.is_empty()
        || (value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!("{value:?} is not a label value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_what_kubectl_get_l_takes() {
        let s = parse("pool=tracing,env in (prod, staging),!gpu,zone!=a,tier==web,spot")
            .expect("parse");
        let rendered = s.to_string();
        assert_eq!(
            rendered,
            "pool=tracing,env in (prod,staging),!gpu,zone!=a,tier=web,spot"
        );
        let node = labels(&[
            ("pool", "tracing"),
            ("env", "prod"),
            ("tier", "web"),
            ("spot", ""),
        ]);
        assert!(s.matches(&node));
        assert!(!s.matches(&labels(&[("pool", "tracing")])));
        assert!(parse("").expect("empty").matches(&BTreeMap::new()));
        for bad in [
            "a=(b", "a in b", "a in (b", "=b", "a,,b", "a b=c", "-a", "a=b c",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse("example.com/pool notin (x)").is_ok());
    }

    #[test]
    fn unannotated_namespaces_trace_every_node_but_the_control_plane_unless_denied() {
        let worker = labels(&[("kubernetes.io/os", "linux")]);
        let cp = labels(&[(CONTROL_PLANE, "")]);
        assert!(allowed(None, "w", &worker, Unannotated::Allow).is_ok());
        let e = allowed(None, "cp", &cp, Unannotated::Allow).unwrap_err();
        assert!(e.contains(ANNOTATION) && e.contains("control-plane"), "{e}");
        let e = allowed(None, "w", &worker, Unannotated::Deny).unwrap_err();
        assert!(e.contains(ANNOTATION), "{e}");
    }

    #[test]
    fn an_annotation_scopes_to_matching_nodes_and_names_the_control_plane_on_purpose() {
        let pool = labels(&[("pool", "tracing")]);
        let cp = labels(&[(CONTROL_PLANE, ""), ("pool", "tracing")]);
        assert!(allowed(Some("pool=tracing"), "n", &pool, Unannotated::Deny).is_ok());
        let e = allowed(Some("pool=web"), "n", &pool, Unannotated::Allow).unwrap_err();
        assert!(e.contains(ANNOTATION) && e.contains("pool=web"), "{e}");
        // Matching the control plane by accident is not enough.
        assert!(allowed(Some("pool=tracing"), "cp", &cp, Unannotated::Allow).is_err());
        assert!(allowed(Some("!gpu"), "cp", &cp, Unannotated::Allow).is_err());
        assert!(allowed(Some(CONTROL_PLANE), "cp", &cp, Unannotated::Allow).is_ok());
        assert!(allowed(
            Some(&format!("{CONTROL_PLANE} in (,true)")),
            "cp",
            &cp,
            Unannotated::Allow
        )
        .is_ok());
        let e = allowed(Some("pool in (x"), "n", &pool, Unannotated::Allow).unwrap_err();
        assert!(e.contains("not a label selector"), "{e}");
    }

    fn key() -> impl Strategy<Value = String> {
        "([a-z0-9]([-a-z0-9.]{0,10}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?"
    }

    fn value() -> impl Strategy<Value = String> {
        "([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?"
    }

    fn expression() -> impl Strategy<Value = Expression> {
        prop_oneof![
            key().prop_map(Expression::Exists),
            key().prop_map(Expression::DoesNotExist),
            (key(), value()).prop_map(|(k, v)| Expression::Equal(k, v)),
            (key(), value()).prop_map(|(k, v)| Expression::NotEqual(k, v)),
            (key(), prop::collection::btree_set(value(), 1..4))
                .prop_map(|(k, v)| Expression::In(k, v)),
            (key(), prop::collection::btree_set(value(), 1..4))
                .prop_map(|(k, v)| Expression::NotIn(k, v)),
        ]
    }

    proptest! {
        /// Whatever kube prints as a selector reads back as the same selector.
        #[test]
        fn selectors_round_trip(exprs in prop::collection::vec(expression(), 1..5)) {
            let selector: Selector = exprs.into_iter().collect();
            let text = selector.to_string();
            prop_assert_eq!(parse(&text), Ok(selector), "{}", text);
        }
    }
}
