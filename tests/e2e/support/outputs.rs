//! Reading a TraceJob's output ConfigMap and the histograms in it.

use crate::support::Kubectl;

/// The ConfigMap named by status.outputRef, read as the user's command reads it.
pub fn output(k: &Kubectl, ns: &str, name: &str, key: &str) -> String {
    let cm = k.jsonpath(ns, &format!("tj/{name}"), ".status.outputRef.name");
    assert!(!cm.is_empty(), "tj/{name} has no status.outputRef");
    let key = key.replace('.', "\\.");
    k.ok(&[
        "get",
        "configmap",
        "-n",
        ns,
        &cm,
        "-o",
        &format!("jsonpath={{.data.{key}}}"),
    ])
}

/// Parses histogram lines of bpftrace's text form: `[256, 512)   187 |@@@@   |`.
pub fn histogram_counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| (l.starts_with('[') || l.starts_with('(')) && l.trim_end().ends_with('|'))
        .map(|l| {
            let after = &l[l.find([')', ']']).map(|i| i + 1).unwrap_or(0)..];
            let count = after.split_whitespace().next().unwrap_or("x");
            count
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("bad bucket line {l:?}"))
        })
        .collect()
}
