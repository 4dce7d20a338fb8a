//! Which namespaces may trace which nodes. A namespace's annotation
//! `observe.tracejob.dev/node-selector` holds a label selector (the syntax of `kubectl get -l`);
//! its TraceJobs run only on nodes whose labels match. A protected node (one with any of the
//! protected labels, by default the control-plane and etcd roles) runs TraceJobs only from
//! namespaces whose selector names one of its protected labels. Namespaces without the
//! annotation trace nothing, or, with the allow-unannotated install option, every node but
//! protected ones. An empty selector is no selector: it is refused.

use std::collections::{BTreeMap, BTreeSet};

use crate::resource::vocabulary::Annotation;
use kube::core::{Expression, Selector, SelectorExt};

/// The Namespace annotation that scopes its TraceJobs to nodes.
const ANNOTATION: Annotation = Annotation::NodeSelector;
/// The labels that make a node protected unless `--protected-node-labels` says otherwise: the
/// node roles of control-plane and etcd nodes, as kubeadm, older clusters, and RKE set them.
pub const PROTECTED_LABELS: [&str; 4] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
    "node-role.kubernetes.io/etcd",
    "node-role.kubernetes.io/controlplane",
];
/// A selector that matches every node but names no protected label: every node without the
/// label `observe.tracejob.dev/untraceable`, so every node but protected ones.
pub const EVERY_NODE_BUT_PROTECTED: &str = "!observe.tracejob.dev/untraceable";

/// What namespaces without the annotation may trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Unannotated {
    /// Every node but protected nodes.
    Allow,
    /// Nothing.
    Deny,
}

/// Whether a TraceJob of a namespace (its annotation, if any) may run on a node (its labels),
/// given the labels that make a node protected (`protected`; empty entries are ignored).
/// Err: why not, for the TraceJob's status.
pub fn allowed(
    annotation: Option<&str>,
    node: &str,
    labels: &BTreeMap<String, String>,
    unannotated: Unannotated,
    protected: &[String],
) -> Result<(), String> {
    // This node's protected labels.
    let own: Vec<&str> = protected
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty() && labels.contains_key(*p))
        .collect();
    let Some(text) = annotation else {
        return match unannotated {
            Unannotated::Deny => Err(format!(
                "this namespace has no {ANNOTATION} annotation, and this cluster lets such namespaces trace no node"
            )),
            Unannotated::Allow if !own.is_empty() => Err(format!(
                "node {node} is protected ({}): only namespaces whose {ANNOTATION} annotation names one of its protected labels may trace it",
                own.join(", ")
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
    if !own.is_empty() && !names_any(&selector, &own) {
        return Err(format!(
            "node {node} is protected ({}), and the namespace's {ANNOTATION} annotation ({text}) names none of its protected labels",
            own.join(", ")
        ));
    }
    Ok(())
}

/// The selector asks for one of `keys` by name (so it matches such a node on purpose, not by
/// accident as `!gpu` or `zone!=a` would).
fn names_any(selector: &Selector, keys: &[&str]) -> bool {
    selector.clone().into_iter().any(|e| match e {
        Expression::Exists(k) | Expression::Equal(k, _) | Expression::In(k, _) => {
            keys.contains(&k.as_str())
        }
        _ => false,
    })
}

/// One entry of `--protected-node-labels`: a label key (or nothing, which protects nothing).
pub fn protected_label(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    key_of(text)
}

/// Parses a label selector as `kubectl get -l` takes it: requirements separated by commas, each
/// `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)` or `key notin (a,b)`.
/// The empty selector is refused: as a namespace's scope it would be every node by accident
/// (name the nodes, or use [`EVERY_NODE_BUT_PROTECTED`]).
pub fn parse(text: &str) -> Result<Selector, String> {
    if text.trim().is_empty() {
        return Err(format!(
            "an empty selector (for every node but protected ones, say {EVERY_NODE_BUT_PROTECTED})"
        ));
    }
    let mut expressions = Vec::new();
    for requirement in split_requirements(text)? {
        let r = requirement.trim();
        if r.is_empty() {
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
        // The empty selector is invalid: as a namespace's scope it would be every node.
        for empty in ["", " ", "\t"] {
            let e = parse(empty).unwrap_err();
            assert!(e.contains(EVERY_NODE_BUT_PROTECTED), "{e}");
        }
        for bad in [
            "a=(b", "a in b", "a in (b", "=b", "a,,b", "a b=c", "-a", "a=b c",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse("example.com/pool notin (x)").is_ok());
    }

    fn defaults() -> Vec<String> {
        PROTECTED_LABELS.map(String::from).to_vec()
    }

    #[test]
    fn unannotated_namespaces_trace_nothing_unless_allowed_and_then_no_protected_node() {
        let worker = labels(&[("kubernetes.io/os", "linux")]);
        let p = defaults();
        let e = allowed(None, "w", &worker, Unannotated::Deny, &p).unwrap_err();
        assert!(e.contains(ANNOTATION.as_str()), "{e}");
        assert!(allowed(None, "w", &worker, Unannotated::Allow, &p).is_ok());
        for label in PROTECTED_LABELS {
            let node = labels(&[(label, "")]);
            let e = allowed(None, "cp", &node, Unannotated::Allow, &p).unwrap_err();
            assert!(e.contains(ANNOTATION.as_str()) && e.contains(label), "{e}");
        }
    }

    #[test]
    fn an_annotation_scopes_to_matching_nodes_and_names_a_protected_label_on_purpose() {
        let p = defaults();
        let pool = labels(&[("pool", "tracing")]);
        assert!(allowed(Some("pool=tracing"), "n", &pool, Unannotated::Deny, &p).is_ok());
        let e = allowed(Some("pool=web"), "n", &pool, Unannotated::Allow, &p).unwrap_err();
        assert!(
            e.contains(ANNOTATION.as_str()) && e.contains("pool=web"),
            "{e}"
        );
        for label in PROTECTED_LABELS {
            let node = labels(&[(label, ""), ("pool", "tracing")]);
            // Matching a protected node by accident is not enough.
            for accident in ["pool=tracing", "!gpu", EVERY_NODE_BUT_PROTECTED] {
                let e = allowed(Some(accident), "cp", &node, Unannotated::Deny, &p).unwrap_err();
                assert!(e.contains(label) && e.contains(accident), "{e}");
            }
            assert!(allowed(Some(label), "cp", &node, Unannotated::Deny, &p).is_ok());
            assert!(allowed(
                Some(&format!("{label} in (,true),pool=tracing")),
                "cp",
                &node,
                Unannotated::Deny,
                &p
            )
            .is_ok());
            // Naming another protected label (one this node lacks) does not name its own.
            let other = PROTECTED_LABELS
                .iter()
                .find(|l| **l != label)
                .expect("another");
            let both = labels(&[(label, ""), (other, "")]);
            assert!(allowed(Some(other), "cp", &both, Unannotated::Deny, &p).is_ok());
            let e = allowed(
                Some(&format!("!{other}")),
                "cp",
                &node,
                Unannotated::Deny,
                &p,
            )
            .unwrap_err();
            assert!(e.contains("names none"), "{e}");
        }
        // Every node but protected ones.
        assert!(allowed(
            Some(EVERY_NODE_BUT_PROTECTED),
            "n",
            &pool,
            Unannotated::Deny,
            &p
        )
        .is_ok());
        let e = allowed(Some("pool in (x"), "n", &pool, Unannotated::Allow, &p).unwrap_err();
        assert!(e.contains("not a label selector"), "{e}");
        // An empty annotation is no selector.
        for empty in ["", "  "] {
            let e = allowed(Some(empty), "n", &pool, Unannotated::Allow, &p).unwrap_err();
            assert!(
                e.contains("not a label selector") && e.contains("empty"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_protected_labels_are_configurable() {
        let custom = vec!["example.com/secure".to_string()];
        let secure = labels(&[("example.com/secure", "yes")]);
        let master = labels(&[("node-role.kubernetes.io/master", "")]);
        let any = Some(EVERY_NODE_BUT_PROTECTED);
        assert!(allowed(any, "s", &secure, Unannotated::Deny, &defaults()).is_ok());
        let e = allowed(any, "s", &secure, Unannotated::Deny, &custom).unwrap_err();
        assert!(e.contains("example.com/secure"), "{e}");
        assert!(allowed(
            Some("example.com/secure=yes"),
            "s",
            &secure,
            Unannotated::Deny,
            &custom
        )
        .is_ok());
        // Only the listed labels protect; an empty entry protects nothing.
        assert!(allowed(any, "m", &master, Unannotated::Deny, &custom).is_ok());
        assert!(allowed(any, "m", &master, Unannotated::Allow, &[String::new()]).is_ok());
        assert_eq!(
            protected_label(" example.com/secure "),
            Ok("example.com/secure".into())
        );
        assert_eq!(protected_label(""), Ok(String::new()));
        assert!(protected_label("not a key").is_err());
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
