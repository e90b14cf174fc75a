//! Stage 6, authorization: may this key call this route, from here? The
//! route's [`Scopes`](crate::Scopes) against the key's
//! [`has_scope`](crate::Principal::has_scope), then the key's
//! [`allowed_networks`](crate::Principal::allowed_networks) against the
//! client's address ([`ClientAddress`](crate::ClientAddress)). Refused:
//! `403`, before any rate-limit counter is touched. A key without a
//! requirement on its route and without networks costs two branches here.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Request, RequestPath, Step};
use crate::cache::KeyCache;
use crate::client_addr::{allows, Found};
use crate::rejection::{AuthRejection, RejectionKind};
use crate::{Lookup, Principal};

impl<C, L> RequestPath<C, L>
where
    C: KeyCache,
    L: Lookup<C::Principal>,
{
    /// Stage 6: the key's scopes and networks; then the rate limit.
    pub(super) fn authorize<B>(
        &self,
        req: &mut http::Request<B>,
        request: Request,
        principal: Arc<C::Principal>,
    ) -> Step<C> {
        if let Some(index) = request.scopes {
            let requirement = self.config.routes.requirement(index);
            if !requirement.scopes.is_satisfied_by(&*principal) {
                self.shared.counters.forbidden_scope.incr();
                return Step::Done(Err(AuthRejection::insufficient_scope(
                    Some(Arc::clone(&self.config.rejection)),
                    Arc::clone(requirement),
                )));
            }
        }
        if let Some(networks) = principal.allowed_networks() {
            let allowed = match self.config.client_address.resolve(req) {
                Found::Addr(addr) => allows(networks, addr),
                Found::Unknown => false,
                Found::NoPeer => {
                    self.warn_no_peer();
                    false
                }
            };
            if !allowed {
                self.shared.counters.forbidden_address.incr();
                return self.reject(RejectionKind::AddressNotAllowed);
            }
        }
        self.admit(req, request, principal)
    }

    /// Once per layer: a key limited to networks met a request that says
    /// nothing of where it came from, a setup that refuses every such key.
    fn warn_no_peer(&self) {
        if !self.shared.no_peer_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a key with allowed networks was refused: the request carries no peer address \
                 (serve axum with into_make_service_with_connect_info::<SocketAddr>(), insert a \
                 PeerAddr, or set ClientAddress::peer_from); every such key will be refused"
            );
        }
    }
}
