//! The tower layer that authenticates every call and checks its role by path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::rules::{needs, Needs};
use super::{denied, Auth};

/// Around every service; without `Auth` (no `[auth]`) it lets everything through.
#[derive(Debug, Clone)]
pub struct AuthLayer(pub Option<Arc<Auth>>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Auth>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        if let Some(auth) = &self.auth {
            if let Err(status) = admit(auth, &mut req) {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        let response = self.inner.call(req);
        Box::pin(async move { Ok(response.await?.map(tonic::body::Body::new)) })
    }
}

/// Authenticate and authorise `req` by its path; the principal goes into its extensions
/// for the handlers' log-scoped checks.
fn admit<B>(auth: &Auth, req: &mut http::Request<B>) -> Result<(), tonic::Status> {
    let path = req.uri().path().to_owned();
    let Needs::Role(role) = needs(&path) else {
        return Ok(());
    };
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cert = req
        .extensions()
        .get::<crate::server::idle::ConnInfo>()
        .map(|c| c.peer_names.clone())
        .unwrap_or_default();
    let principal = auth.authenticate(header, &cert)?;
    if !principal.has(role) {
        return Err(denied(&principal, role, &path));
    }
    req.extensions_mut().insert(principal);
    Ok(())
}
