//! Answering the CNI plugin (`--cni-socket`): an ADD is answered once the pod's capture is in
//! effect (or it needs none), refused, or given up on; DEL at once; CHECK from the datapath
//! itself. The registry decides, as for every other source: this only waits for it.
use std::time::{Duration, Instant};

use meshsteer_cni::proto::{Command, Reply};
use tracing::{debug, info, warn};

use crate::{
    registry::Registry,
    source::{
        change::SourceKey,
        kube::{CniCall, Found, KubePods},
    },
    telemetry::status::PodState,
};

/// How long an ADD waits for the pod's capture (the plugin's own bound is 30 s by default).
const ADD_WAIT: Duration = Duration::from_secs(25);

/// ADDs whose pod is not ready yet.
#[derive(Default)]
pub struct Waiting {
    calls: Vec<(SourceKey, Instant, CniCall)>,
}

/// Takes one call: answers it, or queues an ADD until [`settle`] can.
pub fn take(call: CniCall, kube: &mut KubePods, registry: &mut Registry, waiting: &mut Waiting) {
    let pod = call.pod();
    let key = pod.key();
    let _g = tracing::info_span!("pod", pod = %pod).entered();
    debug!(
        queued_us = call.accepted.elapsed().as_micros(),
        command = ?call.request.command,
        "CNI call taken"
    );
    match call.request.command {
        Command::Del => {
            let uid = call.request.pod.uid.clone();
            registry.apply(kube.cni_del(&pod, &uid));
            call.answer(Reply::Removed);
        }
        Command::Check => {
            let reply = match &call.found {
                Found::NotMeshed(why) => Reply::NotMeshed { why: why.clone() },
                Found::Meshed(view) if !view.captured() => Reply::NotMeshed {
                    why: view.left_alone.clone().unwrap_or_default(),
                },
                _ => check(registry, &key, &call),
            };
            call.answer(reply);
        }
        Command::Add => match &call.found {
            Found::Missing(why) => {
                let reason = why.clone();
                call.answer(Reply::Failed { reason });
            }
            Found::NotMeshed(why) => {
                let why = why.clone();
                call.answer(Reply::NotMeshed { why });
            }
            Found::Meshed(view) => {
                if let Some(why) = &view.left_alone {
                    let why = why.clone();
                    call.answer(Reply::NotMeshed { why });
                    return;
                }
                let Some(netns) = call.request.netns.clone() else {
                    call.answer(Reply::Failed {
                        reason: "ADD without CNI_NETNS".into(),
                    });
                    return;
                };
                let view = (**view).clone();
                let started = Instant::now();
                let changes = kube.cni_add(view, netns, call.request.ips.clone());
                let resolved_us = started.elapsed().as_micros();
                registry.apply(changes);
                debug!(
                    resolved_us,
                    applied_us = started.elapsed().as_micros(),
                    "CNI ADD: pod resolved and applied"
                );
                waiting.calls.push((key, Instant::now() + ADD_WAIT, call));
                settle(registry, waiting);
            }
        },
    }
}

/// Answers the waiting ADDs whose pod is ready, refused, or out of time.
pub fn settle(registry: &Registry, waiting: &mut Waiting) {
    let now = Instant::now();
    let calls = std::mem::take(&mut waiting.calls);
    for (key, deadline, call) in calls {
        let reply = match registry.state(&key) {
            Some(PodState::Ready) => match registry.verify(&key) {
                Ok(()) => Reply::Captured,
                Err(reason) => Reply::Failed { reason },
            },
            // The runtime shows the pod's owner "fix the pod's settings" for a refusal: only
            // for settings, not for the agent's own failures.
            Some(PodState::Error(reason)) if registry.agent_failed(&key) => {
                Reply::Failed { reason }
            }
            Some(PodState::Error(reason)) => Reply::Refused { reason },
            Some(PodState::Waiting(why)) if now >= deadline => Reply::Failed {
                reason: format!("capture not in effect after {ADD_WAIT:?}: {why}"),
            },
            None if now >= deadline => Reply::Failed {
                reason: format!("capture not in effect after {ADD_WAIT:?}"),
            },
            _ => {
                waiting.calls.push((key, deadline, call));
                continue;
            }
        };
        let since_accept_us = call.accepted.elapsed().as_micros();
        match &reply {
            Reply::Captured => info!(pod = %key, since_accept_us, "CNI ADD: capture in effect"),
            other => warn!(pod = %key, reply = ?other, "CNI ADD failed"),
        }
        call.answer(reply);
    }
}

/// CHECK: the pod's capture is in effect, in the sandbox the runtime asks about.
fn check(registry: &Registry, key: &SourceKey, call: &CniCall) -> Reply {
    if let Err(reason) = registry.verify(key) {
        return Reply::Failed { reason };
    }
    match (&call.request.netns, registry.netns(key)) {
        (Some(asked), Some(enrolled)) if asked != enrolled => Reply::Failed {
            reason: format!(
                "enrolled in network namespace {}, not {}",
                enrolled.display(),
                asked.display()
            ),
        },
        _ => Reply::Captured,
    }
}
