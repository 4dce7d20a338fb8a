//! A TraceJob's target pod and container, as pure decisions: which container it names, whether
//! that container runs (and as which container ID), whether it restarted or went away, and the
//! program with the agent's variables filled in.

use k8s_openapi::api::core::v1::Pod;

use crate::resource::vocabulary::Reason;
use crate::resource::Target;

/// The variable for the container's main process (its host PID), kubectl-trace's name.
pub const CONTAINER_PID: &str = "$container_pid";
/// The variable for the container's cgroup v2 id, for `cgroup == $container_cgroup`.
pub const CONTAINER_CGROUP: &str = "$container_cgroup";
/// The variable for the container's root directory as the node sees it (through its main
/// process: `/proc/PID/root`), for probes on the container's own files:
/// `uprobe:$container_root/usr/bin/app:work`.
pub const CONTAINER_ROOT: &str = "$container_root";

/// The container's root as the node sees it, through process `pid`.
pub fn root_of(pid: i32) -> String {
    format!("/proc/{pid}/root")
}

/// The targeted container, running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    /// The runtime's ID without its `containerd://` (or `cri-o://`, `docker://`) prefix.
    pub id: String,
    pub restarts: i32,
}

/// Where a target stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Running(Running),
    /// Not running yet (or not any more): says why.
    NotRunning(String),
    /// It can never run as asked: says why.
    Wrong(String),
}

/// The container `target` names in `pod`, and whether it runs.
pub fn container(pod: &Pod, target: &Target) -> Found {
    let pod_name = &target.pod;
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let name = match (&target.container, names.as_slice()) {
        (Some(c), _) if names.contains(c) => c.clone(),
        (Some(c), _) => {
            return Found::Wrong(format!(
                "pod {pod_name} has no container {c}; its containers: {}",
                names.join(", ")
            ))
        }
        (None, [only]) => only.clone(),
        (None, _) => {
            return Found::Wrong(format!(
                "pod {pod_name} has several containers ({}): name one in spec.target.container",
                names.join(", ")
            ))
        }
    };
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Found::Wrong(format!("pod {pod_name} has ended (phase {phase})"));
    }
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == name));
    let Some(c) = container else {
        let phase = if phase.is_empty() {
            "unknown".into()
        } else {
            phase
        };
        return Found::NotRunning(format!("pod {pod_name} is not running yet (phase {phase})"));
    };
    let running = c.state.as_ref().and_then(|s| s.running.as_ref()).is_some();
    let id = c.container_id.as_deref().and_then(container_id);
    match (running, id) {
        (true, Some(id)) => Found::Running(Running {
            name,
            id,
            restarts: c.restart_count,
        }),
        _ => {
            let waiting = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            Found::NotRunning(format!(
                "container {name} of pod {pod_name} is not running{waiting}"
            ))
        }
    }
}

/// What a node does about a TraceJob with a target, from its store of the pods on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The pod is on this node: this node runs it.
    Here,
    /// The pod is not on this node and the TraceJob names no node: it is this node's only if the
    /// pod comes here. Wait until this node's pods change, asking the API server nothing and
    /// writing nothing (every node sees such a TraceJob; the pod's own node takes it).
    Wait,
    /// The pod is not on this node, which the TraceJob names: ask the API server where the pod
    /// is, to say what is wrong (`absent`).
    Ask,
}

/// `on_this_node`: this node's pod store has the pod. `names_a_node`: spec.nodeName is set (to
/// this node: the agent sees no other node's).
pub fn place(on_this_node: bool, names_a_node: bool) -> Place {
    match (on_this_node, names_a_node) {
        (true, _) => Place::Here,
        (false, false) => Place::Wait,
        (false, true) => Place::Ask,
    }
}

/// What to do about a target pod that is not on the node the TraceJob names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Absent {
    /// Not scheduled yet, or on this node but not in its store yet: wait for it.
    Wait,
    /// It will not come: fail with this reason and message.
    Fail(&'static str, String),
}

/// `pod`: the target pod as the API server has it (None: it does not exist); `named`: the node
/// the TraceJob names (this one); `expired`: `timeout` (--target-timeout) has passed since the
/// TraceJob was created.
pub fn absent(
    pod: Option<&Pod>,
    target: &Target,
    namespace: &str,
    named: &str,
    expired: bool,
    timeout: std::time::Duration,
) -> Absent {
    let Some(pod) = pod else {
        return Absent::Fail(
            Reason::TargetNotFound.as_str(),
            not_found(&target.pod, namespace),
        );
    };
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(n) if n == named => Absent::Wait,
        Some(n) => Absent::Fail(
            Reason::TargetElsewhere.as_str(),
            format!(
                "spec.nodeName is {named}, but pod {} runs on node {n}",
                target.pod
            ),
        ),
        None if expired => Absent::Fail(
            Reason::TargetNotRunning.as_str(),
            format!(
                "pod {} was not scheduled to a node within {}s (--target-timeout)",
                target.pod,
                timeout.as_secs()
            ),
        ),
        None => Absent::Wait,
    }
}

/// The message of a target pod that does not exist (or no longer does).
pub fn not_found(pod: &str, namespace: &str) -> String {
    format!("pod {pod} not found in namespace {namespace}")
}

/// `containerd://ab12…` → `ab12…`; also `cri-o://`, `docker://`. None if it is not such an ID.
pub fn container_id(raw: &str) -> Option<String> {
    let (_, id) = raw.split_once("://")?;
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

/// How a running trace's target was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The container runs again, as another process with another root (`TargetRestarted`).
    pub restarted: bool,
    pub why: String,
}

/// Why a running trace's target is no longer the container it started with, if it is not.
/// `pod` is the pod now (None: deleted).
pub fn lost(pod: Option<&Pod>, target: &Target, started: &Running) -> Option<Lost> {
    let gone = |why: String| {
        Some(Lost {
            restarted: false,
            why,
        })
    };
    let Some(pod) = pod else {
        return gone(format!("the target pod {} was deleted", target.pod));
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return gone(format!("the target pod {} is being deleted", target.pod));
    }
    match container(pod, target) {
        Found::Running(now) if now.id == started.id => None,
        Found::Running(now) => Some(Lost {
            restarted: true,
            why: format!(
                "container {} of pod {} restarted (now {}, restart {}); the maps end at the restart",
                started.name,
                target.pod,
                &now.id[..12.min(now.id.len())],
                now.restarts
            ),
        }),
        // The kubelet shows the exit before the new container: one that will run again is
        // restarting.
        Found::NotRunning(_) if restarts(pod, &started.name) => Some(Lost {
            restarted: true,
            why: format!(
                "container {} of pod {} exited and restarts (restartPolicy {}); the maps end at the restart",
                started.name,
                target.pod,
                restart_policy(pod)
            ),
        }),
        Found::NotRunning(_) | Found::Wrong(_) => gone(format!(
            "container {} of pod {} stopped",
            started.name, target.pod
        )),
    }
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether the kubelet starts container `name` again after it exited: always, or on a failure
/// when it failed (its exit code, from its state or, once waiting, its last state).
fn restarts(pod: &Pod, name: &str) -> bool {
    match restart_policy(pod) {
        "Always" => true,
        "OnFailure" => pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == name))
            .and_then(|c| {
                let state = c.state.as_ref().and_then(|s| s.terminated.as_ref());
                let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                state.or(last).map(|t| t.exit_code != 0)
            })
            .unwrap_or(false),
        _ => false,
    }
}

/// The program with each variable (`$container_pid`, ...) replaced by its value where it is a
/// whole token outside string literals and comments.
pub fn substitute(program: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(program.len());
    let mut rest = program;
    while let Some(c) = rest.chars().next() {
        let (copied, skip) = if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            (&rest[..end], end)
        } else if let Some(body) = rest.strip_prefix("/*") {
            let end = body.find("*/").map_or(rest.len(), |i| i + 4);
            (&rest[..end], end)
        } else if c == '"' {
            let end = string_end(rest);
            (&rest[..end], end)
        } else if c == '$' || c.is_ascii_alphanumeric() || c == '_' {
            // A whole token: `$name`, or an identifier (so `a$b` is never split).
            let end = rest[1..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .map_or(rest.len(), |i| i + 1);
            let token = &rest[..end];
            match vars.iter().find(|(name, _)| *name == token) {
                Some((_, value)) => {
                    out.push_str(value);
                    rest = &rest[end..];
                    continue;
                }
                None => (token, end),
            }
        } else {
            (&rest[..c.len_utf8()], c.len_utf8())
        };
        out.push_str(copied);
        rest = &rest[skip..];
    }
    out
}

/// The byte length of the string literal `text` starts with, its quotes included.
fn string_end(text: &str) -> usize {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return i + 1,
            _ => escaped = false,
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, ContainerStatus, PodSpec, PodStatus,
    };

    fn pod(containers: &[&str], statuses: Vec<ContainerStatus>, phase: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|n| Container {
                        name: n.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(statuses),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running(name: &str, id: &str, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            container_id: Some(id.into()),
            restart_count: restarts,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn target(container: Option<&str>) -> Target {
        Target {
            pod: "web".into(),
            container: container.map(String::from),
        }
    }

    const ID: &str = "d2593419895530de003cf5a20705f65722de0d55175cd0058faec7c16960c37d";

    #[test]
    fn finds_the_named_or_only_container_and_its_id() {
        let p = pod(
            &["app"],
            vec![running("app", &format!("containerd://{ID}"), 0)],
            "Running",
        );
        let want = Found::Running(Running {
            name: "app".into(),
            id: ID.into(),
            restarts: 0,
        });
        assert_eq!(container(&p, &target(None)), want);
        assert_eq!(container(&p, &target(Some("app"))), want);
        let crio = pod(
            &["app"],
            vec![running("app", &format!("cri-o://{ID}"), 2)],
            "Running",
        );
        assert!(
            matches!(container(&crio, &target(None)), Found::Running(r) if r.id == ID && r.restarts == 2)
        );
    }

    #[test]
    fn a_wrong_container_lists_the_pods_containers() {
        let p = pod(&["app", "sidecar"], vec![], "Running");
        let Found::Wrong(m) = container(&p, &target(Some("db"))) else {
            panic!()
        };
        assert!(
            m.contains("no container db") && m.contains("app, sidecar"),
            "{m}"
        );
        let Found::Wrong(m) = container(&p, &target(None)) else {
            panic!()
        };
        assert!(m.contains("spec.target.container"), "{m}");
        let ended = pod(&["app"], vec![], "Succeeded");
        assert!(matches!(container(&ended, &target(None)), Found::Wrong(_)));
    }

    #[test]
    fn a_container_not_running_yet_says_why() {
        let waiting = ContainerStatus {
            name: "app".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ErrImageNeverPull".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Found::NotRunning(m) =
            container(&pod(&["app"], vec![waiting], "Pending"), &target(None))
        else {
            panic!()
        };
        assert!(m.ends_with("ErrImageNeverPull"), "{m}");
        assert!(matches!(
            container(&pod(&["app"], vec![], "Pending"), &target(None)),
            Found::NotRunning(_)
        ));
    }

    #[test]
    fn container_ids_of_each_runtime() {
        assert_eq!(container_id(&format!("containerd://{ID}")), Some(ID.into()));
        assert_eq!(container_id(&format!("cri-o://{ID}")), Some(ID.into()));
        assert_eq!(container_id(&format!("docker://{ID}")), Some(ID.into()));
        assert_eq!(container_id(ID), None);
        assert_eq!(container_id("containerd://../../etc"), None);
    }

    #[test]
    fn a_restart_a_stop_or_a_deletion_loses_the_target() {
        let started = Running {
            name: "app".into(),
            id: ID.into(),
            restarts: 0,
        };
        let same = pod(
            &["app"],
            vec![running("app", &format!("containerd://{ID}"), 0)],
            "Running",
        );
        assert_eq!(lost(Some(&same), &target(None), &started), None);
        let again = pod(
            &["app"],
            vec![running(
                "app",
                "containerd://0000000000000000000000000000000000",
                1,
            )],
            "Running",
        );
        assert!(lost(Some(&again), &target(None), &started)
            .is_some_and(|l| l.restarted && l.why.contains("restarted")));
        assert!(lost(None, &target(None), &started)
            .is_some_and(|l| !l.restarted && l.why.contains("deleted")));
        // Exited, as the kubelet shows it before it starts the container again.
        let exited = |policy: &str, code: i32| {
            let mut p = pod(
                &["app"],
                vec![ContainerStatus {
                    name: "app".into(),
                    container_id: Some(format!("containerd://{ID}")),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                "Running",
            );
            if let Some(s) = p.spec.as_mut() {
                s.restart_policy = Some(policy.into());
            }
            lost(Some(&p), &target(None), &started)
        };
        assert!(exited("Always", 0).is_some_and(|l| l.restarted && l.why.contains("restarts")));
        assert!(exited("OnFailure", 137).is_some_and(|l| l.restarted));
        assert!(exited("OnFailure", 0).is_some_and(|l| !l.restarted && l.why.contains("stopped")));
        assert!(exited("Never", 137).is_some_and(|l| !l.restarted && l.why.contains("stopped")));
    }

    #[test]
    fn the_root_is_filled_in_before_a_path_in_a_probe_spec() {
        let vars = [(CONTAINER_ROOT, root_of(42)), (CONTAINER_PID, "42".into())];
        assert_eq!(
            substitute(
                "uprobe:$container_root/usr/bin/app:work /pid == $container_pid/ { @[ustack] = count(); }",
                &vars
            ),
            "uprobe:/proc/42/root/usr/bin/app:work /pid == 42/ { @[ustack] = count(); }"
        );
        assert_eq!(
            substitute(
                "usdt:$container_root/lib/libfoo.so:foo:bar { printf(\"$container_root\"); } // $container_root",
                &vars
            ),
            "usdt:/proc/42/root/lib/libfoo.so:foo:bar { printf(\"$container_root\"); } // $container_root"
        );
        // A longer name is another variable.
        assert_eq!(substitute("$container_rootx", &vars), "$container_rootx");
    }

    #[test]
    fn an_unassigned_tracejob_whose_pod_is_elsewhere_waits_without_asking() {
        assert_eq!(place(true, false), Place::Here);
        assert_eq!(place(true, true), Place::Here);
        assert_eq!(place(false, false), Place::Wait);
        assert_eq!(place(false, true), Place::Ask);
    }

    #[test]
    fn a_pod_missing_from_the_named_node_says_where_it_is() {
        let t = target(None);
        let timeout = std::time::Duration::from_secs(4);
        let Absent::Fail(reason, m) = absent(None, &t, "ns", "n1", false, timeout) else {
            panic!()
        };
        assert_eq!(reason, "TargetNotFound");
        assert_eq!(m, "pod web not found in namespace ns");
        let mut p = pod(&["app"], vec![], "Pending");
        assert_eq!(
            absent(Some(&p), &t, "ns", "n1", false, timeout),
            Absent::Wait
        );
        let Absent::Fail(reason, m) = absent(Some(&p), &t, "ns", "n1", true, timeout) else {
            panic!()
        };
        assert_eq!(reason, "TargetNotRunning");
        assert!(
            m.contains("not scheduled") && m.contains("within 4s"),
            "{m}"
        );
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some("n2".into());
        }
        let Absent::Fail(reason, m) = absent(Some(&p), &t, "ns", "n1", false, timeout) else {
            panic!()
        };
        assert_eq!(reason, "TargetElsewhere");
        assert_eq!(m, "spec.nodeName is n1, but pod web runs on node n2");
        // On this node already, the store not yet: wait for it, even past the timeout.
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some("n1".into());
        }
        assert_eq!(
            absent(Some(&p), &t, "ns", "n1", true, timeout),
            Absent::Wait
        );
    }

    #[test]
    fn substitutes_whole_tokens_outside_strings_and_comments() {
        let vars = [
            (CONTAINER_PID, "4242".to_string()),
            (CONTAINER_CGROUP, "310".to_string()),
        ];
        let program = r#"// $container_pid in a comment
/* and $container_cgroup
   here */
tracepoint:raw_syscalls:sys_enter /pid == $container_pid && cgroup == $container_cgroup/ {
  printf("$container_pid \"$container_pid\" %d\n", $container_pid);
  $container_pid_too = 1; @[$container_pidx] = count();
}"#;
        let expected = r#"// $container_pid in a comment
/* and $container_cgroup
   here */
tracepoint:raw_syscalls:sys_enter /pid == 4242 && cgroup == 310/ {
  printf("$container_pid \"$container_pid\" %d\n", 4242);
  $container_pid_too = 1; @[$container_pidx] = count();
}"#;
        assert_eq!(substitute(program, &vars), expected);
        // bpftrace reads `a$container_pid` as two tokens too.
        assert_eq!(substitute("a$container_pid+1", &vars), "a4242+1");
        assert_eq!(
            substitute("\"unterminated $container_pid", &vars),
            "\"unterminated $container_pid"
        );
        assert_eq!(substitute("é $container_pid", &vars), "é 4242");
    }
}
