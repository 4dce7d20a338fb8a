//! The deploy files, checked by parsing them: the DaemonSet's security-relevant settings, the
//! Dockerfile, and the optional admission policy (which the 1.20 test cluster cannot run).

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
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
            "daemonset.yaml"
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
        "/configmaps:create",
        "/configmaps:update",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
        "/namespaces:get",
        "/nodes:get",
        "/pods:get",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, expected);
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
        .map(|l| l.split_whitespace().collect())
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

#[test]
fn admission_policies_parse_and_reference_only_existing_fields() {
    let docs: Vec<serde_json::Value> = [
        "daemonset/agent-fence.yaml",
        "daemonset/components/deny-unannotated/admission.yaml",
        "daemonset/optional/deadline-cap.yaml",
    ]
    .into_iter()
    .flat_map(documents)
    .collect();
    let crd = tracejob_agent::resource::crd::crd();
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema)
        .expect("schema");
    let spec_fields: BTreeSet<String> = schema
        .properties
        .as_ref()
        .and_then(|p| p.get("spec"))
        .and_then(|s| s.properties.clone())
        .expect("spec")
        .into_keys()
        .collect();
    let mut expressions = Vec::new();
    let mut policies = 0;
    for doc in &docs {
        match doc["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => {
                let p: ValidatingAdmissionPolicy = typed(doc);
                let spec = p.spec.expect("spec");
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
                let rules = spec
                    .match_constraints
                    .and_then(|m| m.resource_rules)
                    .unwrap_or_default();
                // Each policy is about TraceJobs or about what the agent writes.
                assert!(rules.iter().all(|r| {
                    let groups = r.api_groups.clone().unwrap_or_default();
                    groups == ["observe.tracejob.dev"]
                        || groups == [""]
                        || groups == ["events.k8s.io"]
                }));
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
    assert_eq!(policies, 6);
    for expr in &expressions {
        for (prefix, allowed) in [
            (
                "object.spec.",
                spec_fields.iter().map(String::as_str).collect::<Vec<_>>(),
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
    // The tests/cluster/up API server listens where the overlay says.
    let lib = read("tests/cluster/lib.sh");
    assert!(lib.contains("\napi_port=6443\n"));
    assert_eq!(overlay, base, "the overlay changes more than it should");
}
