//! The agent's Kubernetes client: from in-cluster configuration or KUBECONFIG, counting its
//! requests (by method, watches apart), the bytes it receives (watches apart) and its failures
//! for /metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use kube::Client;
use prometheus_client::metrics::counter::Counter;

use super::traffic::Traffic;

/// A service whose responses count their bytes, watches apart.
#[derive(Clone)]
struct CountBytes<S> {
    inner: S,
    metrics: Arc<Traffic>,
}

impl<S, R, B> tower::Service<axum::http::Request<R>> for CountBytes<S>
where
    S: tower::Service<axum::http::Request<R>, Response = axum::http::Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Unpin,
{
    type Response = axum::http::Response<Counted<B>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<R>) -> Self::Future {
        let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
        let bytes = self.metrics.received(if watch { "watch" } else { "other" });
        let response = self.inner.call(req);
        Box::pin(async move {
            response
                .await
                .map(|res| res.map(|inner| Counted { inner, bytes }))
        })
    }
}

/// A response body that counts the bytes that pass through it.
struct Counted<B> {
    inner: B,
    bytes: Counter,
}

impl<B: Body<Data = bytes::Bytes> + Unpin> Body for Counted<B> {
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client from in-cluster configuration or KUBECONFIG that counts its requests by method
/// (watches apart from plain GETs).
pub async fn connect(metrics: Arc<Traffic>) -> Result<Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let m = metrics.clone();
    let received = metrics.clone();
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
                    m.errors.inc()
                }
                Err(_) => m.errors.inc(),
                Ok(_) => 0,
            };
            result
        });
    // Each response's bytes, counted as its body is read (a watch's for as long as it lasts).
    let bytes = tower::layer::layer_fn(move |inner| CountBytes {
        inner,
        metrics: received.clone(),
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&errors)
        .with_layer(&bytes)
        .with_layer(&count)
        .build())
}
