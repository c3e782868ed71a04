//! What `build` returned, lifted so that an oversized body is never copied
//! out of the plugin's memory.
//!
//! The generated bindings lift `request.body` into a `Vec<u8>`, so a plugin
//! that fills its memory with a body made the host allocate and copy as
//! much again before the size check could refuse it. Here the body is
//! lifted as [`BoundedBody`]: its length is read first, and only a body
//! within the limit is copied. The check has to happen while lifting:
//! wasmtime runs the plugin's post-return function (which frees the body)
//! as soon as the result is lifted, so a view kept for later would point at
//! freed memory.
//!
//! The limit cannot be passed into a lift, so the copy is bounded by the
//! largest `max_body_bytes` of any engine in the process
//! ([`allow_bodies_up_to`]); the engine's own limit is then checked as
//! before, by [`check_build_outcome`](super::request_check::check_build_outcome).
//! A daemon has one engine, so the two are the same.

use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmList};

use super::bindings::types::{BuildOutcome, Header, Method, Request};
use super::error::PluginError;
use super::limits::PluginLimits;

/// The longest body copied out of a plugin's memory: the largest
/// `max_body_bytes` of the engines built so far.
static BODY_COPY_LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Lets bodies of up to `max_body_bytes` be copied out of plugins' memory.
/// Called for every engine built; the process keeps the largest value.
pub(crate) fn allow_bodies_up_to(max_body_bytes: usize) {
    BODY_COPY_LIMIT.fetch_max(max_body_bytes, Ordering::Relaxed);
}

/// A `list<u8>` request body: copied when within the copy limit, otherwise
/// only its length, read from the list's header in the plugin's memory.
pub(crate) enum BoundedBody {
    /// The body, copied out.
    Copied(Vec<u8>),
    /// A body too long to copy, with its length in bytes.
    TooLong(usize),
}

impl BoundedBody {
    fn copy_within_limit(cx: &mut LiftContext<'_>, list: WasmList<u8>) -> wasmtime::Result<Self> {
        if list.len() > BODY_COPY_LIMIT.load(Ordering::Relaxed) {
            return Ok(Self::TooLong(list.len()));
        }
        Ok(Self::Copied(<u8 as Lift>::linear_lift_list_from_memory(
            cx, &list,
        )?))
    }
}

// SAFETY: the type is lowered, laid out and checked exactly as the
// `WasmList<u8>` it delegates to.
unsafe impl ComponentType for BoundedBody {
    type Lower = <WasmList<u8> as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <WasmList<u8> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmList<u8> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifting reads the list's pointer and length through
// `WasmList<u8>`, which checks them against the memory's bounds, and copies
// through `u8`'s own list lifting.
unsafe impl Lift for BoundedBody {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let list = <WasmList<u8> as Lift>::linear_lift_from_flat(cx, ty, src)?;
        Self::copy_within_limit(cx, list)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let list = <WasmList<u8> as Lift>::linear_lift_from_memory(cx, ty, bytes)?;
        Self::copy_within_limit(cx, list)
    }
}

/// A `request` record whose body is lifted as a [`BoundedBody`].
#[derive(ComponentType, Lift)]
#[component(record)]
pub(crate) struct RequestView {
    method: Method,
    path: Option<String>,
    query: Option<String>,
    headers: Vec<Header>,
    body: BoundedBody,
}

/// The `build-outcome` variant, with its request lifted as a [`RequestView`].
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(crate) enum BuildOutcomeView {
    #[component(name = "send")]
    Send(RequestView),
    #[component(name = "skip")]
    Skip,
    #[component(name = "reject")]
    Reject(String),
    #[component(name = "retry-later")]
    RetryLater(String),
}

impl BuildOutcomeView {
    /// The outcome as the WIT type, or the error that a body past the
    /// engine's limit is.
    pub(crate) fn into_outcome(
        self,
        plugin: &str,
        limits: &PluginLimits,
    ) -> Result<BuildOutcome, PluginError> {
        let request = match self {
            BuildOutcomeView::Send(request) => request,
            BuildOutcomeView::Skip => return Ok(BuildOutcome::Skip),
            BuildOutcomeView::Reject(reason) => return Ok(BuildOutcome::Reject(reason)),
            BuildOutcomeView::RetryLater(reason) => return Ok(BuildOutcome::RetryLater(reason)),
        };
        let body = match request.body {
            BoundedBody::Copied(body) => body,
            BoundedBody::TooLong(size) => {
                return Err(PluginError::OutputTooLarge {
                    plugin: plugin.to_owned(),
                    what: "request body",
                    size,
                    limit: limits.max_body_bytes,
                });
            }
        };
        Ok(BuildOutcome::Send(Request {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request.headers,
            body,
        }))
    }
}
