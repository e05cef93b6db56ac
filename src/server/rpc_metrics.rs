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
        let (method, calls) = method_of(req.uri().path());
        calls.increment(1);
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

/// A method's label and its calls counter, registered once: one map lookup per call.
/// `/spool.v1.Log/Append` → `spool.v1.Log/Append`; paths of no service the node serves
/// share the label `other`, so that junk requests cannot grow the label set without bound.
fn method_of(path: &str) -> (&'static str, metrics::Counter) {
    type Known = HashMap<String, (&'static str, metrics::Counter)>;
    static KNOWN: LazyLock<RwLock<Known>> = LazyLock::new(Default::default);
    let name = path.trim_start_matches('/');
    let served = ["spool.", "grpc.health.", "grpc.reflection."]
        .iter()
        .any(|p| name.starts_with(p));
    let shaped = name.split('/').count() == 2 && name.len() <= 96;
    let key = if served && shaped { name } else { "other" };
    if let Some((label, calls)) = KNOWN.read().get(key) {
        return (label, calls.clone());
    }
    let mut known = KNOWN.write();
    let key = if known.len() < 256 { key } else { "other" };
    let (label, calls) = known.entry(key.to_owned()).or_insert_with(|| {
        // Each distinct method is leaked once: a bounded set of static labels.
        let label: &'static str = Box::leak(key.to_owned().into_boxed_str());
        (
            label,
            metrics::counter!("spool_grpc_requests_total", "method" => label),
        )
    });
    (label, calls.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_and_junk_paths_share_one_label() {
        let label = |p: &str| method_of(p).0;
        assert_eq!(label("/spool.v1.Log/Append"), "spool.v1.Log/Append");
        assert_eq!(
            label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(label("/evil/../x/y"), "other");
        assert_eq!(label("/index.html"), "other");
        let first = label("/spool.v1.Log/Read");
        assert!(
            std::ptr::eq(first, label("/spool.v1.Log/Read")),
            "leaked once"
        );
        assert!(
            std::ptr::eq(label("/a/b/c"), label("/x")),
            "junk shares one entry"
        );
    }
}
