//! `kubectl tracejob`: run a trace and read its output with one command. The binary
//! `kubectl-tracejob` on PATH is found by kubectl as a plugin. It follows kubectl's conventions:
//! `--kubeconfig`, `--context`, `-n/--namespace`, `-o json|yaml|name`; progress on stderr,
//! results on stdout.
//!
//! Exit codes: 0 done (for `run`: the trace completed and its output was printed); 1 the trace
//! failed (bpftrace's error is on stderr); 2 usage error; 3 the cluster could not be reached or
//! refused (or the TraceJob does not exist); 130 interrupted by a second Ctrl-C while the trace
//! stopped (the command to fetch the output later is on stderr).

pub mod cli;
pub mod show;

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::output::flame;
use crate::resource::{Phase, Target, TraceJob, TraceJobNode, TraceJobSpec};
use cli::{Cli, Command, Format, RunArgs};

/// How the command ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    TraceFailed(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Cluster(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::TraceFailed(_) => 1,
            Error::Usage(_) => 2,
            Error::Cluster(_) => 3,
            Error::Interrupted => 130,
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Error {
        Error::Cluster(match e {
            kube::Error::Api(s) => s.message.clone(),
            other => other.to_string(),
        })
    }
}

/// How often the TraceJob and its ConfigMap are looked at while a command waits on them.
const POLL: Duration = Duration::from_millis(500);

/// Runs one command line.
pub async fn main(cli: Cli) -> Result<(), Error> {
    if let Command::Completion { shell } = &cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        // For `kubectl-tracejob ...` (kubectl's own completion does not reach plugins' flags).
        cmd = cmd.bin_name("kubectl-tracejob");
        clap_complete::generate(*shell, &mut cmd, "kubectl-tracejob", &mut std::io::stdout());
        return Ok(());
    }
    show::configure(cli.max_output_bytes, cli.raw);
    let (client, default_namespace) = connect(&cli).await?;
    let namespace = cli.namespace.clone().unwrap_or(default_namespace);
    let jobs: Api<TraceJob> = Api::namespaced(client.clone(), &namespace);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Run(args) => run(&client, &jobs, &maps, &namespace, *args, cli.output).await,
        Command::Get { name, trigger } => {
            let list = match (name, trigger) {
                (Some(n), _) => vec![jobs.get(&n).await?],
                (None, Some(t)) => {
                    let by = format!("{}={t}", Label::Trigger.as_str());
                    jobs.list(&ListParams::default().labels(&by)).await?.items
                }
                (None, None) => jobs.list(&ListParams::default()).await?.items,
            };
            print!("{}", show::tracejobs(&list, cli.output)?);
            Ok(())
        }
        Command::Stop { name } => {
            stop(&jobs, &name).await?;
            eprintln!("tracejob {} stopping", show::safe(&name));
            Ok(())
        }
        Command::Output {
            name,
            flamegraph: true,
            ..
        } => {
            let job = jobs.get(&name).await?;
            flame_graph(&maps, &job).await
        }
        Command::Output { name, per_node, .. } => {
            let job = jobs.get(&name).await?;
            output(&maps, &job, cli.output, per_node).await
        }
        Command::Logs { name, follow } => logs(&jobs, &maps, &name, follow).await,
        Command::Delete { name } => {
            jobs.delete(&name, &DeleteParams::default()).await?;
            println!(
                "tracejob.observe.tracejob.dev \"{}\" deleted",
                show::safe(&name)
            );
            Ok(())
        }
        Command::Completion { .. } => Ok(()),
    }
}

/// A client for the kubeconfig and context asked for, and the context's namespace.
async fn connect(cli: &Cli) -> Result<(Client, String), Error> {
    let options = kube::config::KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Cluster(format!("reading {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Cluster(e.to_string()))?
        }
        None if cli.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Cluster(e.to_string()))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Cluster(e.to_string()))?,
    };
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| Error::Cluster(e.to_string()))?;
    Ok((client, namespace))
}

async fn stop(jobs: &Api<TraceJob>, name: &str) -> Result<(), Error> {
    let patch = Patch::Merge(serde_json::json!({"spec": {"stop": true}}));
    jobs.patch(name, &PatchParams::default(), &patch).await?;
    Ok(())
}

/// `run`: creates the TraceJob, follows it, stops it on Ctrl-C, prints its output.
async fn run(
    client: &Client,
    jobs: &Api<TraceJob>,
    maps: &Api<ConfigMap>,
    namespace: &str,
    args: RunArgs,
    format: Option<Format>,
) -> Result<(), Error> {
    let program = match (&args.expression, &args.file) {
        (Some(e), None) => e.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::Usage(format!("reading {}: {e}", f.display())))?,
        _ => {
            return Err(Error::Usage(
                "give the program with -e PROGRAM or -f FILE".into(),
            ))
        }
    };
    let mut node_selector = None;
    let (node_name, target) = match args.what.split_once('/') {
        None if args.what == "nodes" => {
            let text = args.selector.as_deref().ok_or_else(|| {
                Error::Usage("nodes takes a label selector: nodes -l KEY=VALUE".into())
            })?;
            let selector = crate::decide::scope::parse(text)
                .map_err(|e| Error::Usage(format!("-l {text}: {e}")))?;
            node_selector = Some(selector.into());
            (None, None)
        }
        Some(("node" | "nodes" | "no", node)) if !node.is_empty() => (Some(node.to_string()), None),
        Some(("pod" | "pods" | "po", pod)) if !pod.is_empty() => {
            // The pod's node, when it has one: that node's agent alone then sees the TraceJob.
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let node = pods
                .get_opt(pod)
                .await?
                .and_then(|p| p.spec.and_then(|s| s.node_name));
            let target = Target {
                pod: pod.to_string(),
                container: args.container.clone(),
            };
            (node, Some(target))
        }
        _ => {
            return Err(Error::Usage(format!(
                "{}: say where to trace, as node/NAME, pod/NAME or nodes -l SELECTOR",
                args.what
            )))
        }
    };
    let mut job = TraceJob::new(
        args.name.as_deref().unwrap_or_default(),
        TraceJobSpec {
            node_name,
            node_selector,
            target,
            program,
            args: args.args.clone(),
            stop: false,
            deadline: seconds(args.deadline, 3600),
            deadline_grace_period: seconds(args.grace, 30),
            metrics: None,
        },
    );
    if args.name.is_none() {
        job.metadata.name = None;
        job.metadata.generate_name = Some("trace-".into());
    }
    let created = jobs.create(&PostParams::default(), &job).await?;
    let name = created.name_any();
    eprintln!("tracejob {} created", show::safe(&name));
    let mut shown_phase = None;
    let mut shown_running = false;
    let mut printed = Printed::default();
    let mut interrupts = std::pin::pin!(ctrl_c_stream());
    let mut stopping = false;
    loop {
        let job = jobs.get(&name).await?;
        let phase = job.phase();
        if phase != shown_phase {
            let status = job.status.as_ref();
            // A trace that ran is said to have run even when it went by between two looks.
            let ran =
                phase == Some(Phase::Running) || status.is_some_and(|s| s.start_time.is_some());
            if ran && !shown_running {
                if let Some(s) = status {
                    eprintln!(
                        "Running on {} with {} probes",
                        show::safe(s.node_name.as_deref().unwrap_or("its node")),
                        s.probes.unwrap_or(0)
                    );
                }
                shown_running = true;
            }
            match phase {
                Some(Phase::Running) => {}
                Some(p) if !p.is_final() => eprintln!("{p}"),
                _ => {}
            }
            shown_phase = phase;
        }
        if args.detach && phase == Some(Phase::Running) {
            match format {
                Some(Format::Name) => {
                    println!("tracejob.observe.tracejob.dev/{}", show::safe(&name))
                }
                _ => println!("{}", show::safe(&name)),
            }
            return Ok(());
        }
        if phase.is_some_and(Phase::is_final) {
            return finished(maps, &job, format).await;
        }
        // Live output, as it arrives, goes to stderr: stdout gets the final output alone.
        if let Some(cm) = output_configmap(maps, &job).await? {
            printed.live(&cm, &mut std::io::stderr());
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = interrupts.next() => {
                if stopping {
                    let (name, namespace) = (show::safe(&name), show::safe(namespace));
                    eprintln!(
                        "\nleft while tracejob {name} stops; its output will be there: kubectl tracejob output {name} -n {namespace}"
                    );
                    return Err(Error::Interrupted);
                }
                stopping = true;
                eprintln!("\nstopping (Ctrl-C again to leave; the output stays in the cluster)");
                stop(jobs, &name).await?;
            }
        }
    }
}

/// A stream of Ctrl-Cs.
fn ctrl_c_stream() -> impl futures::Stream<Item = ()> {
    futures::stream::unfold((), |()| async {
        tokio::signal::ctrl_c().await.ok().map(|()| ((), ()))
    })
}

use crate::resource::vocabulary::{Annotation, Label};
use futures::StreamExt;

/// The output of a finished trace on stdout, or its error on stderr.
async fn finished(
    maps: &Api<ConfigMap>,
    job: &TraceJob,
    format: Option<Format>,
) -> Result<(), Error> {
    let status = job.status.clone().unwrap_or_default();
    if job.phase() == Some(Phase::Failed) {
        if let Some(cm) = output_configmap(maps, job).await? {
            let _ = show::write_output(&mut std::io::stdout(), &show::output_bytes(&cm)?);
        }
        return Err(Error::TraceFailed(
            status.message.unwrap_or_else(|| "the trace failed".into()),
        ));
    }
    output(maps, job, format, false).await
}

/// `output`: the trace's output as bpftrace printed it, or its maps as JSON. A TraceJob on
/// several nodes shows each node's printf lines under its name, then the maps merged (`per_node`:
/// each node's output apart).
async fn output(
    maps: &Api<ConfigMap>,
    job: &TraceJob,
    format: Option<Format>,
    per_node: bool,
) -> Result<(), Error> {
    if job.spec.node_selector.is_some() {
        return fan_out_output(maps, job, format, per_node).await;
    }
    let Some(cm) = output_configmap(maps, job).await? else {
        return Err(no_output(job));
    };
    let mut out = std::io::stdout();
    match format {
        Some(Format::Json) => {
            let maps = show::maps_of(&cm)?;
            let json =
                serde_json::to_string_pretty(&maps).map_err(|e| Error::Cluster(e.to_string()))?;
            let _ = writeln!(out, "{json}");
        }
        Some(Format::Yaml) => {
            let maps = show::maps_of(&cm)?;
            let yaml = serde_saphyr::to_string(&maps).map_err(|e| Error::Cluster(e.to_string()))?;
            let _ = write!(out, "{yaml}");
        }
        _ => {
            let _ = show::write_output(&mut out, &show::output_bytes(&cm)?);
        }
    }
    Ok(())
}

fn no_output(job: &TraceJob) -> Error {
    Error::Cluster(format!(
        "tracejob {} has no output yet (phase {})",
        job.name_any(),
        job.phase().map_or("none".into(), |p| p.to_string())
    ))
}

/// `output --flamegraph`: the trace's stacks (each node's, added up) as an SVG on stdout.
async fn flame_graph(maps: &Api<ConfigMap>, job: &TraceJob) -> Result<(), Error> {
    let configmaps = if job.spec.node_selector.is_some() {
        node_outputs(maps, job).await?
    } else {
        output_configmap(maps, job)
            .await?
            .map(|cm| vec![(String::new(), cm)])
            .unwrap_or_default()
    };
    if configmaps.is_empty() {
        return Err(no_output(job));
    }
    let all = configmaps
        .iter()
        .map(|(_, cm)| show::maps_of(cm))
        .collect::<Result<Vec<_>, _>>()?;
    let no_stacks = |e: flame::Error| Error::Cluster(format!("tracejob {}: {e}", job.name_any()));
    let name = flame::stack_map(&all).ok_or_else(|| no_stacks(flame::Error::NoStacks))?;
    let folded = flame::folded(&all, &name);
    let title = format!("{} {name}", job.name_any());
    let svg = flame::svg(&folded, &title).map_err(no_stacks)?;
    std::io::stdout()
        .write_all(&svg)
        .map_err(|e| Error::Cluster(format!("writing the flame graph: {e}")))
}

/// Each node's output ConfigMap of a TraceJob on several nodes, by node name.
async fn node_outputs(
    maps: &Api<ConfigMap>,
    job: &TraceJob,
) -> Result<Vec<(String, ConfigMap)>, Error> {
    // Each node's part names its output; only the parts of this TraceJob (by UID) count.
    let parts: Api<TraceJobNode> = Api::namespaced(
        maps.clone().into_client(),
        &job.namespace().unwrap_or_default(),
    );
    let selector = format!("{}={}", Label::TraceJob, job.name_any());
    let mut list = parts
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    list.retain(|p| p.owner_uid().is_some() && p.owner_uid() == job.uid().as_deref());
    list.sort_by(|a, b| a.spec.node_name.cmp(&b.spec.node_name));
    let mut nodes = Vec::new();
    for part in list {
        let Some(r) = part.status.as_ref().and_then(|s| s.output_ref.as_ref()) else {
            continue;
        };
        if let Some(cm) = maps.get_opt(&r.name).await? {
            nodes.push((part.spec.node_name.clone(), owned(cm, job)?));
        }
    }
    Ok(nodes)
}

async fn fan_out_output(
    maps: &Api<ConfigMap>,
    job: &TraceJob,
    format: Option<Format>,
    per_node: bool,
) -> Result<(), Error> {
    let nodes = node_outputs(maps, job).await?;
    if nodes.is_empty() {
        return Err(no_output(job));
    }
    let mut out = std::io::stdout();
    if per_node && format.is_none() {
        for (node, cm) in &nodes {
            let _ = writeln!(out, "==> node {} <==", show::safe(node));
            let _ = show::write_output(&mut out, &show::output_bytes(cm)?);
        }
        return Ok(());
    }
    let merged = show::merged(&nodes, &job.spec.program)?;
    match format {
        Some(Format::Json) => {
            let json = serde_json::to_string_pretty(&merged.json())
                .map_err(|e| Error::Cluster(e.to_string()))?;
            let _ = writeln!(out, "{json}");
        }
        Some(Format::Yaml) => {
            let yaml = serde_saphyr::to_string(&merged.json())
                .map_err(|e| Error::Cluster(e.to_string()))?;
            let _ = write!(out, "{yaml}");
        }
        _ => {
            let _ = show::write_output(&mut out, merged.text().as_bytes());
        }
    }
    Ok(())
}

/// `logs`: the trace's newest output; with `follow`, what it prints next too, until it ends.
async fn logs(
    jobs: &Api<TraceJob>,
    maps: &Api<ConfigMap>,
    name: &str,
    follow: bool,
) -> Result<(), Error> {
    let mut printed = Printed::default();
    let mut out = std::io::stdout();
    loop {
        let job = jobs.get(name).await?;
        let done = job.phase().is_some_and(Phase::is_final);
        if let Some(cm) = output_configmap(maps, &job).await? {
            printed.live(&cm, &mut out);
        }
        if done || !follow {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The output ConfigMap of a TraceJob, once it has one.
async fn output_configmap(
    maps: &Api<ConfigMap>,
    job: &TraceJob,
) -> Result<Option<ConfigMap>, Error> {
    let Some(name) = job
        .status
        .as_ref()
        .and_then(|s| s.output_ref.as_ref())
        .map(|r| r.name.clone())
    else {
        return Ok(None);
    };
    maps.get_opt(&name)
        .await?
        .map(|cm| owned(cm, job))
        .transpose()
}

/// `cm`, if its TraceJob owns it; otherwise an error saying so.
fn owned(cm: ConfigMap, job: &TraceJob) -> Result<ConfigMap, Error> {
    if show::owned_by(&cm, job) {
        return Ok(cm);
    }
    Err(Error::Cluster(format!(
        "configmap {} is not owned by tracejob {} (uid {}): not showing it",
        cm.name_any(),
        job.name_any(),
        job.uid().unwrap_or_default()
    )))
}

/// How much of a trace's output has been printed, so each copy adds only what is new.
#[derive(Default)]
struct Printed {
    /// Bytes of the whole output printed so far.
    upto: u64,
}

impl Printed {
    /// Prints what `cm` holds beyond what was printed: a live copy says where it starts in the
    /// whole output; a final one holds it all.
    fn live(&mut self, cm: &ConfigMap, out: &mut impl Write) {
        let annotations = cm.metadata.annotations.clone().unwrap_or_default();
        let live = annotations
            .get(Annotation::Live.as_str())
            .is_some_and(|v| v == "true");
        let offset: u64 = annotations
            .get(Annotation::LiveOffset.as_str())
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let Ok(bytes) = show::output_bytes(cm) else {
            return;
        };
        let start = if live { offset } else { 0 };
        let end = start + bytes.len() as u64;
        if end <= self.upto {
            return;
        }
        let from = self.upto.saturating_sub(start) as usize;
        let _ = show::write_output(out, &bytes[from.min(bytes.len())..]);
        let _ = out.flush();
        self.upto = end;
    }
}

fn seconds(d: Option<humantime::Duration>, default: i64) -> i64 {
    d.map_or(default, |d| {
        i64::try_from(Duration::from(d).as_secs())
            .unwrap_or(i64::MAX)
            .max(1)
    })
}
