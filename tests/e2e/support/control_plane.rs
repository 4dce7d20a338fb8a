//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager of
//! the release in tests/harness/kubernetes (built from Go modules, cached), each run in its own
//! data directory on free ports, all ended when the value is dropped.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{must, repo_root, Proc};

/// The admin credential of the test API server, in its static token file.
const ADMIN_TOKEN: &str = "tracejob-test-admin-token";

pub struct ControlPlane {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub port: u16,
    etcd_port: u16,
    /// The kubeconfig with the administrator's token.
    pub kubeconfig: PathBuf,
    etcd: Option<Proc>,
    apiserver: Mutex<Option<Proc>>,
    controller_manager: Option<Proc>,
    _tmp: tempfile::TempDir,
}

/// Builds the binaries once (cached outside the repository) and returns their directory: the
/// current release, or the one whose build module TRACEJOB_KUBERNETES_MODULE names (the
/// compatibility run on the oldest supported release).
pub fn binaries() -> PathBuf {
    let script = repo_root().join("tests/harness/build-kubernetes.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if let Some(module) = std::env::var_os("TRACEJOB_KUBERNETES_MODULE") {
        cmd.arg(module);
    }
    let out = must(
        cmd.stderr(Stdio::inherit()).output(),
        "run build-kubernetes.sh",
    );
    assert!(out.status.success(), "building Kubernetes failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The release the tests run on, as its build module pins it (`require k8s.io/kubernetes vX.Y.Z`).
pub fn pinned_release() -> String {
    let module = std::env::var_os("TRACEJOB_KUBERNETES_MODULE").map_or_else(
        || repo_root().join("tests/harness/kubernetes"),
        PathBuf::from,
    );
    let module = if module.is_absolute() {
        module
    } else {
        repo_root().join(module)
    };
    let go_mod = must(std::fs::read_to_string(module.join("go.mod")), "go.mod");
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("require k8s.io/kubernetes "))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{} pins no k8s.io/kubernetes", module.display()))
}

/// A free loopback port for a test server. Drawn below the kernel's ephemeral range (32768 and up
/// by default), from a random base and never twice in one run: a port the kernel hands to
/// `bind(:0)` or to an outgoing connection is never one of ours, so a server that stops and starts
/// again (the API server, in the restart tests) finds its port still free.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::OnceLock;
    const LOW: u16 = 20000;
    const SPAN: u16 = 12000;
    static BASE: OnceLock<u16> = OnceLock::new();
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = *BASE.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        (h.finish() % u64::from(SPAN)) as u16
    });
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = LOW + (base + offset) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

impl ControlPlane {
    pub fn start() -> ControlPlane {
        let bin = binaries();
        let tmp = must(
            tempfile::Builder::new().prefix("tracejob-cp-").tempdir(),
            "tempdir",
        );
        let dir = tmp.path().to_path_buf();
        for sub in ["etcd", "certs", "logs"] {
            must(fs::create_dir_all(dir.join(sub)), "mkdir");
        }
        let key = dir.join("sa.key");
        let status = must(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&key)
                .arg("2048")
                .stderr(Stdio::null())
                .status(),
            "run openssl",
        );
        assert!(status.success(), "openssl genrsa failed");
        must(
            fs::write(
                dir.join("tokens.csv"),
                format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n"),
            ),
            "write token file",
        );
        let mut cp = ControlPlane {
            bin,
            port: free_port(),
            etcd_port: free_port(),
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            etcd: None,
            apiserver: Mutex::new(None),
            controller_manager: None,
            _tmp: tmp,
        };
        cp.start_etcd();
        cp.start_apiserver();
        cp.write_kubeconfig(&cp.kubeconfig.clone(), ADMIN_TOKEN);
        cp.start_controller_manager();
        cp
    }

    fn log_file(&self, name: &str) -> fs::File {
        must(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("logs").join(format!("{name}.log"))),
            "open log",
        )
    }

    fn spawn(&self, name: &str, cmd: &mut Command) -> Proc {
        let log = self.log_file(name);
        let err = must(log.try_clone(), "clone log");
        cmd.stdout(log).stderr(err).stdin(Stdio::null());
        Proc::spawn(name, cmd)
    }

    fn start_etcd(&mut self) {
        let url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", free_port());
        let etcd = self.spawn(
            "etcd",
            Command::new(self.bin.join("etcd"))
                .arg("--data-dir")
                .arg(self.dir.join("etcd"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args(["--initial-cluster", &format!("default={peer}")])
                .args(["--unsafe-no-fsync"]),
        );
        self.etcd = Some(etcd);
    }

    /// Starts kube-apiserver and waits until /readyz answers.
    pub fn start_apiserver(&self) {
        let d = &self.dir;
        let mut cmd = Command::new(self.bin.join("kube-apiserver"));
        cmd.arg(format!(
            "--etcd-servers=http://127.0.0.1:{}",
            self.etcd_port
        ))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", self.port))
        // Nothing dials the advertised address; it only has to be non-loopback.
        .arg("--advertise-address=192.0.2.1")
        .arg(format!("--cert-dir={}", d.join("certs").display()))
        .arg(format!(
            "--token-auth-file={}",
            d.join("tokens.csv").display()
        ))
        .arg("--authorization-mode=RBAC")
        .arg(format!(
            "--service-account-key-file={}",
            d.join("sa.key").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            d.join("sa.key").display()
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg("--service-cluster-ip-range=10.96.0.0/24")
        .arg("--allow-privileged=true")
        .arg("--enable-priority-and-fairness=false");
        let proc = self.spawn("kube-apiserver", &mut cmd);
        if let Ok(mut a) = self.apiserver.lock() {
            *a = Some(proc);
        }
        self.wait_ready();
    }

    /// The API server's PID, while it runs.
    pub fn apiserver_pid(&self) -> Option<i32> {
        self.apiserver
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|p| p.pid()))
    }

    pub fn stop_apiserver(&self) {
        if let Ok(mut a) = self.apiserver.lock() {
            *a = None;
        }
    }

    /// etcd's client URL (the fault tests compact it through its JSON gateway).
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/readyz", self.server_url());
        loop {
            let ok = Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
                .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
                .arg(&url)
                .output()
                .map(|o| o.stdout == b"200")
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready within 60s; see {}",
                self.dir.join("logs/kube-apiserver.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes a kubeconfig for this server authenticating with `token`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: user, namespace: default}}\ncurrent-context: test\n",
            self.server_url(),
            self.ca_file().display(),
            token
        );
        must(fs::write(path, text), "write kubeconfig");
    }

    fn start_controller_manager(&mut self) {
        let d = &self.dir;
        let mut cmd = Command::new(self.bin.join("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--controllers=garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,clusterrole-aggregation-controller,root-ca-certificate-publisher-controller")
            .arg(format!(
                "--service-account-private-key-file={}",
                d.join("sa.key").display()
            ))
            .arg(format!("--root-ca-file={}", self.ca_file().display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0");
        let proc = self.spawn("kube-controller-manager", &mut cmd);
        self.controller_manager = Some(proc);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse order of start, so nothing logs a storm of connection errors.
        self.controller_manager = None;
        self.stop_apiserver();
        self.etcd = None;
    }
}
