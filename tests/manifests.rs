//! The deploy files, checked by parsing them: the DaemonSet's and the summarizer's
//! security-relevant settings, their roles, the Dockerfile, and the admission policies.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn documents(path: &str) -> Vec<serde_json::Value> {
    yaml_documents(&read(path), path)
}

/// The documents of a YAML stream (`---` separated), empty ones left out.
fn yaml_documents(text: &str, what: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(text)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Parses `value` as `T` and checks nothing was dropped: a misspelled field fails.
fn typed<T: DeserializeOwned + serde::Serialize>(value: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"));
    let back = serde_json::to_value(&t).expect("serializes");
    assert_eq!(
        strip_empty(back),
        strip_empty(value.clone()),
        "fields were not understood"
    );
    t
}

fn strip_empty(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, strip_empty(v)))
                .filter(|(_, v)| !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty())))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(strip_empty).collect())
        }
        other => other,
    }
}

fn daemonset() -> DaemonSet {
    let docs = documents("daemonset/daemonset.yaml");
    typed(&docs[0])
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = documents("daemonset/kustomization.yaml").remove(0);
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(
        resources,
        [
            "namespace.yaml",
            "crd.yaml",
            "rbac-agent.yaml",
            "rbac-users.yaml",
            "agent-fence.yaml",
            "namespace-scopes.yaml",
            "daemonset.yaml",
            "summarizer.yaml"
        ]
    );
    for r in resources {
        assert!(root().join("daemonset").join(r).exists(), "{r}");
    }
}

#[test]
fn daemonset_is_privileged_with_host_pid_and_the_mounts_bpftrace_needs() {
    let ds = daemonset();
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("tracejob-agent"));
    assert!(pod.termination_grace_period_seconds.unwrap_or(0) >= 10);
    let tolerations = pod.tolerations.unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "runs on every node"
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let env = c.env.clone().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"));
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env.iter().find(|e| e.name == name).expect(name);
        let field = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(field, Some(path), "{name}");
    }
    let mounts: Vec<(String, bool)> = c
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.mount_path, m.read_only.unwrap_or(false)))
        .collect();
    for (path, read_only) in [
        ("/sys/kernel/tracing", false),
        ("/sys/kernel/debug", false),
        ("/sys/kernel/btf", true),
        ("/lib/modules", true),
        ("/usr/src", true),
        ("/var/lib/tracejob-agent", false),
        ("/host/sys/fs/cgroup", false),
    ] {
        assert!(
            mounts.contains(&(path.to_string(), read_only)),
            "{path} read_only={read_only} in {mounts:?}"
        );
    }
    let volumes = pod.volumes.unwrap_or_default();
    let state = volumes
        .iter()
        .find(|v| v.name == "state")
        .and_then(|v| v.host_path.clone())
        .expect("state hostPath");
    assert_eq!(state.path, "/var/lib/tracejob-agent");
    let cgroup = volumes
        .iter()
        .find(|v| v.name == "cgroup")
        .and_then(|v| v.host_path.clone())
        .expect("cgroup hostPath");
    assert_eq!(cgroup.path, "/sys/fs/cgroup");
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe(&c.readiness_probe).as_deref(), Some("/readyz"));
    let resources = c.resources.clone().expect("resources");
    assert!(resources
        .requests
        .is_some_and(|r| r.contains_key("memory") && r.contains_key("cpu")));
    assert!(resources.limits.is_some_and(|l| l.contains_key("memory")));
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert!(args
        .iter()
        .any(|a| a == "--host-cgroup-root=/host/sys/fs/cgroup"));
}

fn grants(rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>) -> BTreeSet<String> {
    let mut granted = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    granted
}

#[test]
fn agent_role_in_its_namespace_reads_only_its_pod_and_daemonset() {
    let docs = documents("daemonset/rbac-agent.yaml");
    let role: Role = typed(docs.iter().find(|d| d["kind"] == "Role").expect("Role"));
    assert_eq!(role.metadata.namespace.as_deref(), Some("tracejob-system"));
    let expected: BTreeSet<String> = ["/pods:get", "apps/daemonsets:get"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(grants(role.rules.unwrap_or_default()), expected);
    let binding: RoleBinding = typed(
        docs.iter()
            .find(|d| d["kind"] == "RoleBinding")
            .expect("RoleBinding"),
    );
    assert_eq!(binding.role_ref.kind, "Role");
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "tracejob-agent");
}

#[test]
fn agent_role_grants_only_what_the_agent_uses() {
    let docs = documents("daemonset/rbac-agent.yaml");
    let role: ClusterRole = typed(
        docs.iter()
            .find(|d| d["kind"] == "ClusterRole")
            .expect("ClusterRole"),
    );
    let granted = grants(role.rules.unwrap_or_default());
    let expected: BTreeSet<String> = [
        "observe.tracejob.dev/tracejobs:get",
        "observe.tracejob.dev/tracejobs:list",
        "observe.tracejob.dev/tracejobs:watch",
        "observe.tracejob.dev/tracejobs/status:patch",
        "observe.tracejob.dev/tracejobnodes:get",
        "observe.tracejob.dev/tracejobnodes:list",
        "observe.tracejob.dev/tracejobnodes:create",
        "observe.tracejob.dev/tracejobnodes:patch",
        "observe.tracejob.dev/tracejobnodes/status:patch",
        "/configmaps:create",
        "/configmaps:update",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
        "/namespaces:get",
        "/namespaces:list",
        "/namespaces:watch",
        "/nodes:get",
        "/nodes:list",
        "/nodes:watch",
        "/pods:get",
        "/pods:list",
        "/pods:watch",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, expected);
}

fn summarizer_deployment() -> Deployment {
    let docs = documents("daemonset/summarizer.yaml");
    typed(
        docs.iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("Deployment"),
    )
}

#[test]
fn summarizer_runs_unprivileged_with_two_replicas_of_the_agents_image() {
    let d = summarizer_deployment();
    assert_eq!(d.metadata.name.as_deref(), Some("tracejob-summarizer"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("tracejob-system"));
    let spec = d.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2), "one active, one standing by");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("tracejob-summarizer")
    );
    // No host access of any kind.
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert!(
        pod.volumes
            .unwrap_or_default()
            .iter()
            .all(|v| v.host_path.is_none()),
        "a hostPath volume"
    );
    assert!(pod.tolerations.is_none(), "it runs where workloads run");
    let pod_security = pod.security_context.clone().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|u| u != 0));
    assert_eq!(
        pod_security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    let agent_image = daemonset()
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers[0].image.clone());
    assert!(agent_image.is_some());
    assert_eq!(c.image, agent_image, "the agent's image");
    assert_eq!(c.args.clone().unwrap_or_default(), ["summarize"]);
    let sc = c
        .security_context
        .clone()
        .expect("container securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop.unwrap_or_default(), ["ALL"]);
    assert!(caps.add.unwrap_or_default().is_empty());
    assert!(sc.run_as_user.is_none_or(|u| u != 0));
    assert_ne!(sc.run_as_non_root, Some(false));
    let env = c.env.clone().unwrap_or_default();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env.iter().find(|e| e.name == name).expect(name);
        let field = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(field, Some(path), "{name}");
    }
    // The summarizer's --listen default.
    let ports = c.ports.clone().unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("metrics port");
    assert_eq!(metrics.container_port, 9470);
    assert!(metrics.host_port.is_none());
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert!(
            get.port == IntOrString::String("metrics".into()) || get.port == IntOrString::Int(9470),
            "{path} on {:?}",
            get.port
        );
    }
    let resources = c.resources.clone().expect("resources");
    assert!(resources
        .requests
        .is_some_and(|r| r.contains_key("memory") && r.contains_key("cpu")));
    assert!(resources.limits.is_some_and(|l| l.contains_key("memory")));
    assert!(c.volume_mounts.is_none());
}

#[test]
fn summarizer_roles_grant_only_what_it_uses() {
    let docs = documents("daemonset/summarizer.yaml");
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).expect(kind);
    let role: ClusterRole = typed(find("ClusterRole"));
    let expected: BTreeSet<String> = [
        "observe.tracejob.dev/tracejobs:list",
        "observe.tracejob.dev/tracejobs:watch",
        "observe.tracejob.dev/tracejobnodes:list",
        "observe.tracejob.dev/tracejobnodes:watch",
        "observe.tracejob.dev/tracejobs/status:patch",
        "/configmaps:list",
        "/configmaps:create",
        "/configmaps:update",
        "/pods:get",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let rules = role.rules.unwrap_or_default();
    assert!(rules.iter().all(|r| r.resource_names.is_none()));
    assert_eq!(grants(rules), expected);
    let binding: ClusterRoleBinding = typed(find("ClusterRoleBinding"));
    assert_eq!(binding.role_ref.name, "tracejob-summarizer");
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "tracejob-summarizer");
    assert_eq!(subjects[0].namespace.as_deref(), Some("tracejob-system"));
    // In its namespace: its Lease, read and renewed by name, created when absent.
    let role: Role = typed(find("Role"));
    assert_eq!(role.metadata.namespace.as_deref(), Some("tracejob-system"));
    let rules = role.rules.unwrap_or_default();
    let named: Vec<_> = rules
        .iter()
        .filter(|r| r.resource_names.is_some())
        .cloned()
        .collect();
    assert!(named
        .iter()
        .all(|r| r.resource_names.as_deref() == Some(&["tracejob-summarizer".to_string()][..])));
    assert_eq!(
        grants(named),
        BTreeSet::from([
            "coordination.k8s.io/leases:get".to_string(),
            "coordination.k8s.io/leases:update".to_string()
        ])
    );
    assert_eq!(
        grants(rules),
        ["get", "update", "create"]
            .iter()
            .map(|v| format!("coordination.k8s.io/leases:{v}"))
            .collect::<BTreeSet<_>>()
    );
    let binding: RoleBinding = typed(find("RoleBinding"));
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(
        binding.metadata.namespace.as_deref(),
        Some("tracejob-system")
    );
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "tracejob-summarizer");
    let sa = find("ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "tracejob-summarizer");
    assert_eq!(sa["metadata"]["namespace"], "tracejob-system");
}

#[test]
fn dockerfile_is_multi_stage_pinned_and_runs_the_agent_with_bpftrace() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        // FROM [--platform=...] IMAGE [AS NAME]
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect()
        })
        .collect();
    let stages: Vec<(&str, &str)> = froms
        .iter()
        .map(|f| (f[1], f.get(3).copied().unwrap_or("")))
        .collect();
    let names: Vec<&str> = stages.iter().map(|(_, name)| *name).collect();
    // A build stage, a stage for a binary built on the host, the choice of the two, the runtime.
    assert_eq!(names, ["build", "prebuilt", "agent", "runtime"]);
    for (image, _) in [stages[0], stages[3]] {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{image} is not pinned"
        );
    }
    assert!(
        lines.contains(&"ARG AGENT_STAGE=build"),
        "by default the image builds the agent itself"
    );
    assert_eq!(stages[2].0, "${AGENT_STAGE}");
    let body = lines.join("\n");
    assert!(
        body.contains("cargo build --release --locked"),
        "release build"
    );
    let runtime = &body[body.find("AS runtime").expect("runtime stage")..];
    assert!(
        runtime.contains("apt-get install") && runtime.contains("bpftrace"),
        "bpftrace from the distribution"
    );
    assert!(runtime
        .contains("COPY --from=agent /usr/local/bin/tracejob-agent /usr/local/bin/tracejob-agent"));
    assert!(runtime.contains(r#"ENTRYPOINT ["/usr/local/bin/tracejob-agent"]"#));
    assert!(!runtime.contains("--unsafe"));
}

/// The names of the properties of `field` (`spec` or `status`) in a CRD's schema.
fn schema_fields(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    field: &str,
) -> Vec<String> {
    crd.spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema)
        .and_then(|s| s.properties)
        .and_then(|p| p.get(field).cloned())
        .and_then(|s| s.properties)
        .unwrap_or_else(|| panic!("{}: no {field}", crd.spec.names.kind))
        .into_keys()
        .collect()
}

fn fence_policies() -> Vec<ValidatingAdmissionPolicy> {
    documents("daemonset/agent-fence.yaml")
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .map(typed)
        .collect()
}

/// Every CEL expression of a policy: validations, messages, match conditions, variables.
fn policy_expressions(p: &ValidatingAdmissionPolicy) -> Vec<String> {
    let spec = p.spec.clone().expect("spec");
    let mut expressions = Vec::new();
    for v in spec.validations.unwrap_or_default() {
        expressions.push(v.expression);
        expressions.extend(v.message_expression);
    }
    for m in spec.match_conditions.unwrap_or_default() {
        expressions.push(m.expression);
    }
    for v in spec.variables.unwrap_or_default() {
        expressions.push(v.expression);
    }
    expressions
}

/// The resources a policy matches ("tracejobnodes/status", "configmaps", ...).
fn policy_resources(p: &ValidatingAdmissionPolicy) -> Vec<String> {
    p.spec
        .clone()
        .and_then(|s| s.match_constraints)
        .and_then(|m| m.resource_rules)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.resources.unwrap_or_default())
        .collect()
}

#[test]
fn admission_policies_parse_and_reference_only_existing_fields() {
    let docs: Vec<serde_json::Value> = [
        "daemonset/agent-fence.yaml",
        "daemonset/namespace-scopes.yaml",
        "daemonset/optional/deadline-cap.yaml",
    ]
    .into_iter()
    .flat_map(documents)
    .collect();
    let tracejob = tracejob_agent::resource::crd::crd();
    let part = tracejob_agent::resource::crd::node_crd();
    let mut policies = 0;
    for doc in &docs {
        match doc["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => {
                let p: ValidatingAdmissionPolicy = typed(doc);
                let rules = p
                    .spec
                    .clone()
                    .and_then(|s| s.match_constraints)
                    .and_then(|m| m.resource_rules)
                    .unwrap_or_default();
                // Each policy is about TraceJobs or about what the agent and summarizer write.
                assert!(rules.iter().all(|r| {
                    let groups = r.api_groups.clone().unwrap_or_default();
                    groups == ["observe.tracejob.dev"]
                        || groups == [""]
                        || groups == ["events.k8s.io"]
                }));
                // object.spec and object.status are the TraceJobNode's in a policy about
                // TraceJobNodes, else the TraceJob's.
                let resources = policy_resources(&p);
                let crd = if resources.iter().any(|r| r.starts_with("tracejobnodes")) {
                    assert!(
                        resources.iter().all(|r| r.starts_with("tracejobnodes")),
                        "one kind per policy: {resources:?}"
                    );
                    &part
                } else {
                    &tracejob
                };
                let spec = schema_fields(crd, "spec");
                let status = schema_fields(crd, "status");
                for expr in policy_expressions(&p) {
                    for (prefix, allowed) in [
                        ("object.spec.", spec.iter().map(String::as_str).collect()),
                        ("oldObject.spec.", spec.iter().map(String::as_str).collect()),
                        (
                            "object.status.",
                            status.iter().map(String::as_str).collect(),
                        ),
                        (
                            "oldObject.status.",
                            status.iter().map(String::as_str).collect(),
                        ),
                        (
                            "request.userInfo.",
                            vec!["username", "extra", "groups", "uid"],
                        ),
                        ("params.data.", vec!["maxDeadlineSeconds"]),
                    ] {
                        for (i, _) in expr.match_indices(prefix) {
                            let field: String = expr[i + prefix.len()..]
                                .chars()
                                .take_while(|c| c.is_ascii_alphanumeric())
                                .collect();
                            assert!(
                                allowed.contains(&field.as_str()),
                                "{expr}: {prefix}{field} does not exist"
                            );
                        }
                    }
                    assert!(
                        expr.matches('(').count() == expr.matches(')').count(),
                        "unbalanced: {expr}"
                    );
                }
                policies += 1;
            }
            Some("ValidatingAdmissionPolicyBinding") => {
                let b: ValidatingAdmissionPolicyBinding = typed(doc);
                let name = b.spec.and_then(|s| s.policy_name).expect("policyName");
                assert!(docs.iter().any(|d| d["kind"] == "ValidatingAdmissionPolicy"
                    && d["metadata"]["name"] == name.as_str()));
            }
            Some("ConfigMap") => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(policies, 11);
}

/// The fences' match conditions: a ServiceAccount of this name in any namespace, so that they
/// hold wherever the install put it (agent-fence.yaml says why matching broadly is safe).
const AGENT: &str =
    "request.userInfo.username.matches('^system:serviceaccount:[^:]+:tracejob-agent$')";
const SUMMARIZER: &str =
    "request.userInfo.username.matches('^system:serviceaccount:[^:]+:tracejob-summarizer$')";

#[test]
fn fences_match_each_service_account_by_name_in_any_namespace_and_cover_every_write() {
    let policies = fence_policies();
    let mut covered: BTreeSet<(String, String)> = BTreeSet::new();
    for p in &policies {
        let name = p.metadata.name.clone().expect("name");
        // Every policy is bound, and denies.
        let bound = documents("daemonset/agent-fence.yaml").iter().any(|d| {
            d["kind"] == "ValidatingAdmissionPolicyBinding"
                && d["spec"]["policyName"] == name.as_str()
                && d["spec"]["validationActions"] == serde_json::json!(["Deny"])
        });
        assert!(bound, "{name} is not bound with Deny");
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.failure_policy.as_deref()),
            Some("Fail"),
            "{name}"
        );
        if name == "tracejob-namespaces" {
            continue;
        }
        let conditions = p
            .spec
            .clone()
            .and_then(|s| s.match_conditions)
            .unwrap_or_default();
        assert_eq!(conditions.len(), 1, "{name}");
        let who = [AGENT, SUMMARIZER]
            .into_iter()
            .find(|sa| conditions[0].expression == *sa)
            .unwrap_or_else(|| panic!("{name} matches no service account by its name"));
        // Nothing names the install's namespace: a renamed install would escape it.
        for expr in policy_expressions(p) {
            assert!(!expr.contains("tracejob-system"), "{name}: {expr}");
        }
        assert!(name.starts_with(if who == AGENT {
            "tracejob-agent-"
        } else {
            "tracejob-summarizer-"
        }));
        for resource in policy_resources(p) {
            covered.insert((who.to_string(), resource));
        }
    }
    // Every resource each may write (its ClusterRole's create, update and patch) has a fence.
    for (who, file) in [
        (AGENT, "daemonset/rbac-agent.yaml"),
        (SUMMARIZER, "daemonset/summarizer.yaml"),
    ] {
        let docs = documents(file);
        let role: ClusterRole = typed(
            docs.iter()
                .find(|d| d["kind"] == "ClusterRole")
                .expect("ClusterRole"),
        );
        for rule in role.rules.unwrap_or_default() {
            if !rule
                .verbs
                .iter()
                .any(|v| ["create", "update", "patch"].contains(&v.as_str()))
            {
                continue;
            }
            for resource in rule.resources.unwrap_or_default() {
                assert!(
                    covered.contains(&(who.to_string(), resource.clone())),
                    "{who} writes {resource} unfenced"
                );
            }
        }
    }
}

/// The validations of policy `name`, joined: what it checks, as text.
fn checks(name: &str) -> String {
    let p = fence_policies()
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no policy {name}"));
    let spec = p.spec.expect("spec");
    let mut text: Vec<String> = spec
        .validations
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.expression)
        .collect();
    text.extend(
        spec.variables
            .unwrap_or_default()
            .into_iter()
            .map(|v| format!("{} = {}", v.name, v.expression)),
    );
    text.join("\n")
}

fn operations(name: &str) -> BTreeSet<String> {
    fence_policies()
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .and_then(|p| p.spec)
        .and_then(|s| s.match_constraints)
        .and_then(|m| m.resource_rules)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.operations.unwrap_or_default())
        .collect()
}

#[test]
fn the_agent_writes_only_its_own_nodes_parts_and_no_fan_out_status() {
    let status = checks("tracejob-agent-status");
    assert!(!status.contains("status.nodes"), "status.nodes is gone");
    assert!(
        status.contains("!has(object.spec.nodeSelector)"),
        "the agent writes no fan-out TraceJob's status:\n{status}"
    );
    let parts = checks("tracejob-agent-tracejobnodes");
    for needle in [
        "object.spec.nodeName == variables.node",
        "oldObject.spec.nodeName == variables.node",
        "object.metadata.labels['observe.tracejob.dev/node'] == variables.node",
        "variables.node != ''",
        "'kube-system'",
    ] {
        assert!(parts.contains(needle), "{needle} is not checked:\n{parts}");
    }
    assert_eq!(
        policy_resources(
            &fence_policies()
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some("tracejob-agent-tracejobnodes"))
                .expect("policy")
        ),
        ["tracejobnodes", "tracejobnodes/status"]
    );
    assert_eq!(
        operations("tracejob-agent-tracejobnodes"),
        BTreeSet::from(["CREATE".to_string(), "UPDATE".to_string()])
    );
}

#[test]
fn the_summarizer_writes_only_summaries_and_merged_outputs() {
    let status = checks("tracejob-summarizer-status");
    for needle in [
        "has(object.spec.nodeSelector)",
        "has(object.spec.target) && !has(object.spec.nodeName)",
    ] {
        assert!(status.contains(needle), "{needle}:\n{status}");
    }
    let maps = checks("tracejob-summarizer-configmaps");
    for needle in [
        "object.metadata.labels['observe.tracejob.dev/merged'] == 'true'",
        "!('observe.tracejob.dev/node' in object.metadata.labels)",
        "size(object.metadata.ownerReferences) == 1",
        "o.kind == 'TraceJob'",
        "o.controller",
        "request.operation != 'UPDATE' ||",
        "oldObject.metadata.labels['observe.tracejob.dev/merged'] == 'true'",
        "['kube-system', 'kube-public', 'kube-node-lease', variables.home]",
        "home = request.userInfo.username.split(':')[2]",
    ] {
        assert!(maps.contains(needle), "{needle}:\n{maps}");
    }
    assert_eq!(
        operations("tracejob-summarizer-configmaps"),
        BTreeSet::from(["CREATE".to_string(), "UPDATE".to_string()])
    );
    assert!(checks("tracejob-summarizer-events").contains("object.regarding.kind == 'TraceJob'"));
}

#[test]
fn the_agent_writes_only_its_own_outputs_and_events() {
    let maps = checks("tracejob-agent-configmaps");
    for needle in [
        // Its node's, in neither the system namespaces nor its own (wherever that is).
        "object.metadata.labels['observe.tracejob.dev/node'] == variables.node",
        "variables.node != ''",
        "['kube-system', 'kube-public', 'kube-node-lease', variables.home]",
        "home = request.userInfo.username.split(':')[2]",
        // Exactly one owner, a controller reference to a TraceJob (or TraceJobNode).
        "size(object.metadata.ownerReferences) == 1",
        "(o.kind == 'TraceJob' || o.kind == 'TraceJobNode')",
        "o.apiVersion.startsWith('observe.tracejob.dev/')",
        "has(o.controller) && o.controller",
        // Named and labelled for that owner.
        "object.metadata.labels['observe.tracejob.dev/tracejob'] == o.name",
        "o.name == variables.base",
        "lastIndexOf('-output-')",
        "variables.run.matches('^[0-9a-f]{8}(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$')",
        // An update only over its own output of the same owner.
        "oldObject.metadata.labels['observe.tracejob.dev/node'] == variables.node",
        "oldObject.metadata.ownerReferences == object.metadata.ownerReferences",
    ] {
        assert!(maps.contains(needle), "{needle} is not checked:\n{maps}");
    }
    // OWNER-output-RUN, as the agent names them (OWNER, a label value too, is never cut short).
    assert_eq!(
        tracejob_agent::cluster::writer::output_name("owner", "0b6c1f1e"),
        "owner-output-0b6c1f1e"
    );
    let events = checks("tracejob-agent-events");
    for needle in [
        "(object.regarding.kind == 'TraceJob' || object.regarding.kind == 'TraceJobNode')",
        "object.regarding.namespace == request.namespace",
        "object.reportingInstance == variables.node",
        "oldObject.reportingInstance == variables.node",
        "['kube-system', 'kube-public', 'kube-node-lease', variables.home]",
    ] {
        assert!(
            events.contains(needle),
            "{needle} is not checked:\n{events}"
        );
    }
    assert!(checks("tracejob-agent-tracejobnodes").contains("variables.home]"));
}

fn scope_policy(name: &str) -> ValidatingAdmissionPolicy {
    documents("daemonset/namespace-scopes.yaml")
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .map(typed::<ValidatingAdmissionPolicy>)
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no policy {name}"))
}

#[test]
fn namespaces_trace_nothing_until_annotated_by_someone_allowed_to() {
    let docs = documents("daemonset/namespace-scopes.yaml");
    for name in ["tracejob-annotated-namespaces", "tracejob-namespace-scopes"] {
        let p = scope_policy(name);
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.failure_policy.as_deref()),
            Some("Fail"),
            "{name}"
        );
        assert!(
            docs.iter()
                .any(|d| d["kind"] == "ValidatingAdmissionPolicyBinding"
                    && d["spec"]["policyName"] == name
                    && d["spec"]["validationActions"] == serde_json::json!(["Deny"])),
            "{name} is not bound with Deny"
        );
        // For everyone: no match condition narrows it.
        assert!(p.spec.and_then(|s| s.match_conditions).is_none(), "{name}");
    }
    let text = |p: ValidatingAdmissionPolicy| policy_expressions(&p).join("\n");
    let deny = text(scope_policy("tracejob-annotated-namespaces"));
    for needle in [
        "'observe.tracejob.dev/node-selector' in namespaceObject.metadata.annotations",
        ".trim() != ''",
    ] {
        assert!(deny.contains(needle), "{needle}:\n{deny}");
    }
    assert_eq!(
        policy_resources(&scope_policy("tracejob-annotated-namespaces")),
        ["tracejobs"]
    );
    let scopes = text(scope_policy("tracejob-namespace-scopes"));
    for needle in [
        "authorizer.group('observe.tracejob.dev').resource('namespacescopes').name(object.metadata.name).check('update').allowed()",
        "variables.scoped != variables.wasScoped || variables.scope != variables.oldScope",
        "variables.scope.trim() != ''",
    ] {
        assert!(scopes.contains(needle), "{needle}:\n{scopes}");
    }
    assert_eq!(
        policy_resources(&scope_policy("tracejob-namespace-scopes")),
        ["namespaces", "namespaces/*"]
    );
    // The permission, for people: that one virtual resource, not aggregated anywhere.
    let users = documents("daemonset/rbac-users.yaml");
    let role: ClusterRole = typed(
        users
            .iter()
            .find(|d| d["metadata"]["name"] == "tracejob-scope-admin")
            .expect("ClusterRole tracejob-scope-admin"),
    );
    assert!(role
        .metadata
        .labels
        .unwrap_or_default()
        .keys()
        .all(|k| !k.contains("aggregate-to")));
    assert_eq!(
        grants(role.rules.unwrap_or_default()),
        BTreeSet::from(["observe.tracejob.dev/namespacescopes:update".to_string()])
    );
}

#[test]
fn the_allow_unannotated_component_removes_only_the_default_deny() {
    let base = kustomize("daemonset");
    let mut allowing = kustomize("tests/fixtures/allow-unannotated");
    let removed: Vec<&serde_json::Value> = base
        .iter()
        .filter(|d| !allowing.contains(d))
        .filter(|d| d["kind"] != "DaemonSet")
        .collect();
    let names: Vec<String> = removed
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "ValidatingAdmissionPolicy/tracejob-annotated-namespaces",
            "ValidatingAdmissionPolicyBinding/tracejob-annotated-namespaces"
        ]
    );
    let ds = allowing
        .iter_mut()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array_mut()
        .expect("args");
    assert_eq!(args.pop(), Some("--unannotated-namespaces=allow".into()));
    let rest: Vec<&serde_json::Value> = base.iter().filter(|d| !removed.contains(d)).collect();
    assert_eq!(allowing.iter().collect::<Vec<_>>(), rest);
}

#[test]
fn the_prometheus_component_adds_a_podmonitor_and_the_trace_metrics_port() {
    let base = kustomize("daemonset");
    let with = kustomize("tests/fixtures/prometheus");
    assert_eq!(
        with.len(),
        base.len() + 1,
        "one document more: the PodMonitor"
    );
    let monitor = with
        .iter()
        .find(|d| d["kind"] == "PodMonitor")
        .expect("PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], "tracejob-system");
    let ports: Vec<&str> = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["port"].as_str())
        .collect();
    assert_eq!(ports, ["metrics", "trace-metrics"]);
    let ds = with
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("DaemonSet");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    let pod = &ds["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert!(
        container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == "trace-metrics" && p["containerPort"] == 9472),
        "{container}"
    );
    // The agent's default --trace-metrics-listen is that port.
    let args = container["args"].to_string();
    assert!(!args.contains("--trace-metrics-listen"), "{args}");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9472");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    // Nothing else changes.
    let others = |docs: &[serde_json::Value]| -> Vec<serde_json::Value> {
        docs.iter()
            .filter(|d| d["kind"] != "DaemonSet" && d["kind"] != "PodMonitor")
            .cloned()
            .collect()
    };
    assert_eq!(others(&with), others(&base));
}

#[test]
fn a_renamed_install_names_tracejob_system_nowhere() {
    let renamed = kustomize("tests/fixtures/renamed-install");
    assert_eq!(renamed.len(), kustomize("daemonset").len());
    let text = serde_json::to_string(&renamed).expect("json");
    assert!(!text.contains("tracejob-system"), "{text}");
    let ns = renamed
        .iter()
        .find(|d| d["kind"] == "Namespace")
        .expect("Namespace");
    assert_eq!(ns["metadata"]["name"], "tracing-elsewhere");
    for d in &renamed {
        for subject in d["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["namespace"], "tracing-elsewhere", "{d}");
        }
    }
    // The protected node labels, set as the README shows.
    let fixture = read("tests/fixtures/renamed-install/kustomization.yaml");
    let patch = &fixture[fixture.find("patches:").expect("patches")..];
    // In the README, a code block inside a list item: indented by two.
    let indented: String = patch.lines().map(|l| format!("  {l}\n")).collect();
    assert!(
        read("README.md").contains(&indented),
        "the README's patch differs:\n{indented}"
    );
    let ds = renamed
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    for label in tracejob_agent::decide::scope::PROTECTED_LABELS {
        assert!(args.contains(label), "{label}: {args}");
    }
}

/// `kubectl kustomize DIR`, with the kubectl of the test release (built by the harness, cached).
fn kustomize(dir: &str) -> Vec<serde_json::Value> {
    let built = std::process::Command::new("bash")
        .arg(root().join("tests/harness/build-kubernetes.sh"))
        .output()
        .expect("build-kubernetes.sh");
    assert!(built.status.success(), "build-kubernetes.sh failed");
    let kubectl = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim()).join("kubectl");
    let out = std::process::Command::new(kubectl)
        .args(["kustomize", dir])
        .current_dir(root())
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&out.stdout), dir)
}

#[test]
fn the_local_cluster_overlay_changes_only_what_that_cluster_needs() {
    let base = kustomize("daemonset");
    let mut overlay = kustomize("tests/cluster/overlay");
    assert_eq!(base.len(), overlay.len());
    let ds = overlay
        .iter_mut()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let pod = &mut ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    pod.as_object_mut().map(|p| p.remove("hostNetwork"));
    let c = &mut pod["containers"][0];
    assert_eq!(c["image"], "localhost/tracejob-agent:dev");
    assert_eq!(c["imagePullPolicy"], "Never");
    c["image"] = "ghcr.io/tracejob-dev/tracejob-agent:0.1.0".into();
    c["imagePullPolicy"] = "IfNotPresent".into();
    let added: Vec<(String, String)> = [
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
        ("LISTEN_ADDRESS", "127.0.0.1:9469"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = c["env"].as_array_mut().expect("env");
    let mut found = Vec::new();
    env.retain(|e| {
        let pair = (
            e["name"].as_str().unwrap_or_default().to_string(),
            e["value"].as_str().unwrap_or_default().to_string(),
        );
        let local = added.contains(&pair);
        if local {
            found.push(pair);
        }
        !local
    });
    found.sort();
    assert_eq!(found, added);
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &mut c[probe]["httpGet"];
        assert_eq!(get["host"], "127.0.0.1", "{probe}");
        get.as_object_mut().map(|g| g.remove("host"));
    }
    // The summarizer: the same, and one replica (one node, one host port).
    let d = overlay
        .iter_mut()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    assert_eq!(d["spec"]["replicas"], 1);
    d["spec"]["replicas"] = 2.into();
    assert_eq!(
        d["spec"]["strategy"],
        serde_json::json!({"type": "Recreate"})
    );
    d["spec"].as_object_mut().map(|s| s.remove("strategy"));
    let pod = &mut d["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    pod.as_object_mut().map(|p| p.remove("hostNetwork"));
    let c = &mut pod["containers"][0];
    assert_eq!(c["image"], "localhost/tracejob-agent:dev");
    assert_eq!(c["imagePullPolicy"], "Never");
    c["image"] = "ghcr.io/tracejob-dev/tracejob-agent:0.1.0".into();
    c["imagePullPolicy"] = "IfNotPresent".into();
    let added: Vec<(String, String)> = [
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
        ("LISTEN_ADDRESS", "127.0.0.1:9470"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = c["env"].as_array_mut().expect("env");
    let mut found = Vec::new();
    env.retain(|e| {
        let pair = (
            e["name"].as_str().unwrap_or_default().to_string(),
            e["value"].as_str().unwrap_or_default().to_string(),
        );
        let local = added.contains(&pair);
        if local {
            found.push(pair);
        }
        !local
    });
    found.sort();
    assert_eq!(found, added);
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &mut c[probe]["httpGet"];
        assert_eq!(get["host"], "127.0.0.1", "{probe}");
        get.as_object_mut().map(|g| g.remove("host"));
    }
    // The tests/cluster/up API server listens where the overlay says.
    let lib = read("tests/cluster/lib.sh");
    assert!(lib.contains("\napi_port=6443\n"));
    assert_eq!(overlay, base, "the overlay changes more than it should");
}

/// The trigger component's alert-namespaces annotation is guarded as the node scope is: every
/// path that writes a Namespace's metadata, by the same permission.
#[test]
fn the_alert_namespaces_annotation_is_guarded_on_every_path() {
    let docs = documents("daemonset/components/trigger/alert-namespaces.yaml");
    let policy: ValidatingAdmissionPolicy = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .map(typed)
        .expect("the policy");
    let mut resources = policy_resources(&policy);
    resources.sort();
    assert_eq!(
        resources,
        ["namespaces", "namespaces/finalize", "namespaces/status"]
    );
    let rules = policy
        .spec
        .clone()
        .and_then(|s| s.match_constraints)
        .and_then(|m| m.resource_rules)
        .unwrap_or_default();
    for r in rules {
        let mut ops = r.operations.unwrap_or_default();
        ops.sort();
        assert_eq!(ops, ["CREATE", "UPDATE"]);
    }
    let text = policy_expressions(&policy).join("\n");
    assert!(
        text.contains("resource('namespacescopes')") && text.contains("check('update')"),
        "{text}"
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "ValidatingAdmissionPolicyBinding"
                && d["spec"]["policyName"] == "tracejob-alert-namespaces"
                && d["spec"]["validationActions"] == serde_json::json!(["Deny"])),
        "the policy is bound, denying"
    );
    let kustomization = read("daemonset/components/trigger/kustomization.yaml");
    assert!(kustomization.contains("alert-namespaces.yaml"));
}
