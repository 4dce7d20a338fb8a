//! The agent's Kubernetes client: from in-cluster configuration or KUBECONFIG, counting its
//! requests (by method, watches apart) and failures for /metrics.

use std::sync::Arc;

use kube::Client;

use crate::metrics::Metrics;

/// A client from in-cluster configuration or KUBECONFIG that counts its requests by method
/// (watches apart from plain GETs).
pub async fn connect(metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let m = metrics.clone();
    let count =
        tower::util::MapRequestLayer::new(move |req: axum::http::Request<kube::client::Body>| {
            let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
            let path = req.uri().path();
            let resource = ["tracejobs", "configmaps", "events"]
                .into_iter()
                .find(|r| path.contains(&format!("/{r}")))
                .unwrap_or("other");
            metrics.request(
                if watch {
                    "WATCH"
                } else {
                    req.method().as_str()
                },
                resource,
            );
            req
        });
    let errors =
        tower::util::MapResultLayer::new(move |result: Result<axum::http::Response<_>, _>| {
            match &result {
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    m.api_errors.inc()
                }
                Err(_) => m.api_errors.inc(),
                Ok(_) => 0,
            };
            result
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&errors)
        .with_layer(&count)
        .build())
}
