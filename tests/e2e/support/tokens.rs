//! The install as a user applies it, and the bound tokens of its service accounts.

use std::path::Path;
use std::time::Duration;

use crate::support::tracejobs::{tracejob_yaml, SYSCOUNT};
use crate::support::{register_node, wait_for, Env};

pub fn install_kustomization(env: &Env, dir: &Path) {
    env.kubectl.ok(&["apply", "-k", &dir.to_string_lossy()]);
    env.kubectl.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/tracejobnodes.observe.tracejob.dev",
    ]);
    // Admission policies take effect once the API server has loaded them.
    wait_for(
        Duration::from_secs(30),
        "the admission policies to be enforced",
        || {
            let r = env.kubectl.run_with_stdin(
                &["apply", "--dry-run=server", "-n", "kube-system", "-f", "-"],
                &tracejob_yaml("probe", "nowhere", SYSCOUNT, ""),
            );
            (!r.ok && r.stderr.contains("ValidatingAdmissionPolicy")).then_some(())
        },
    );
}

/// A token of the agent's ServiceAccount bound to a pod on `node` (as the kubelet gets one for
/// the DaemonSet's pod), and a kubeconfig using it.
pub fn bound_token(env: &Env, node: &str, dir: &Path) -> (String, std::path::PathBuf) {
    bound_token_of(env, "tracejob-agent", node, dir)
}

/// A token of ServiceAccount `sa` (in tracejob-system) bound to a pod of it on `node`, as the
/// kubelet gets one for that pod, and a kubeconfig using it.
pub fn bound_token_of(env: &Env, sa: &str, node: &str, dir: &Path) -> (String, std::path::PathBuf) {
    bound_token_in(env, "tracejob-system", sa, node, dir)
}

/// A token of ServiceAccount `sa` of namespace `home` (where the install put it) bound to a pod
/// of it on `node`, and a kubeconfig using it.
pub fn bound_token_in(
    env: &Env,
    home: &str,
    sa: &str,
    node: &str,
    dir: &Path,
) -> (String, std::path::PathBuf) {
    let k = &env.kubectl;
    register_node(env, node, &[]);
    let pod = format!("{sa}-on-{node}");
    let yaml = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": home},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [{"name": "agent", "image": "localhost/tracejob-agent:dev"}]
        }
    });
    k.run_with_stdin(&["apply", "-f", "-"], &yaml.to_string());
    let token = k
        .ok(&[
            "create",
            "token",
            sa,
            "-n",
            home,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &pod,
            "--duration",
            "1h",
        ])
        .trim()
        .to_string();
    let kubeconfig = dir.join(format!("{home}-{sa}-{node}.kubeconfig"));
    env.cp.write_kubeconfig(&kubeconfig, &token);
    (token, kubeconfig)
}
