//! Per-method call and error counters (`spool_grpc_requests_total{method}`,
//! `spool_grpc_errors_total{method,code}`), counted as calls enter the server. An error is
//! seen when the call's status comes in the response headers (a call refused or failed
//! before its first message, as every failed unary call is); a stream that fails later
//! reports its status in trailers, which this layer does not read.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use parking_lot::RwLock;

#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(req.uri().path());
        requests(method).increment(1);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            let code = response
                .headers()
                .get("grpc-status")
                .map(|v| tonic::Code::from_bytes(v.as_bytes()));
            if let Some(code) = code.filter(|c| *c != tonic::Code::Ok) {
                metrics::counter!(
                    "spool_grpc_errors_total",
                    "method" => method,
                    "code" => format!("{code:?}"),
                )
                .increment(1);
            }
            Ok(response)
        })
    }
}

/// `/spool.v1.Log/Append` → `spool.v1.Log/Append`; paths of no service the node serves
/// share one label, so that junk requests cannot grow the label set without bound.
fn method_label(path: &str) -> &'static str {
    static KNOWN: LazyLock<RwLock<HashMap<String, &'static str>>> = LazyLock::new(Default::default);
    let name = path.trim_start_matches('/');
    if let Some(m) = KNOWN.read().get(name) {
        return m;
    }
    let served = ["spool.", "grpc.health.", "grpc.reflection."]
        .iter()
        .any(|p| name.starts_with(p));
    let parts = name.split('/').count() == 2 && name.len() <= 96;
    if !(served && parts) || KNOWN.read().len() >= 256 {
        return "other";
    }
    // Each distinct method is leaked once: a bounded set of static labels.
    let label: &'static str = Box::leak(name.to_owned().into_boxed_str());
    KNOWN.write().entry(name.to_owned()).or_insert(label)
}

/// The requests counter of a method, registered once (not looked up per call).
fn requests(method: &'static str) -> metrics::Counter {
    static HANDLES: LazyLock<RwLock<HashMap<&'static str, metrics::Counter>>> =
        LazyLock::new(Default::default);
    if let Some(c) = HANDLES.read().get(method) {
        return c.clone();
    }
    HANDLES
        .write()
        .entry(method)
        .or_insert_with(|| metrics::counter!("spool_grpc_requests_total", "method" => method))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_and_junk_paths_share_one_label() {
        assert_eq!(method_label("/spool.v1.Log/Append"), "spool.v1.Log/Append");
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/evil/../x/y"), "other");
        assert_eq!(method_label("/index.html"), "other");
        let first = method_label("/spool.v1.Log/Read");
        assert!(
            std::ptr::eq(first, method_label("/spool.v1.Log/Read")),
            "leaked once"
        );
    }
}
