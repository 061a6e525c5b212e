//! The commands: what each asks of the agent, and what it answers the runtime.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::client::{self, ClientError, Connect};
use crate::conf::{self, FALLBACK_VERSION, MAX_CONFIG, NetConf, SUPPORTED_VERSIONS};
use crate::env::{CniCommand, Env};
use crate::error::Error;
use crate::proto::{Command, Reply, Request};
use crate::{args, result};

/// How long DEL, CHECK and STATUS try to connect: an agent that is not there does not come
/// back within a CNI call, and DEL must not hold up the runtime for it.
const CONNECT_ONCE: Duration = Duration::from_secs(2);

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit_code: i32,
}

/// Runs one CNI command: the environment through `var`, the configuration on `stdin`,
/// diagnostics to `log` (stderr).
pub fn run(
    var: impl Fn(&str) -> Option<OsString>,
    stdin: impl Read,
    log: &mut dyn Write,
) -> Outcome {
    let mut input = Vec::new();
    let read = stdin
        .take(MAX_CONFIG as u64 + 1)
        .read_to_end(&mut input)
        .map(|_| input);
    let version = read
        .as_ref()
        .ok()
        .and_then(|i| conf::version_of(i))
        .unwrap_or_else(|| FALLBACK_VERSION.to_string());
    let outcome = Env::read(var)
        .map_err(Error::from)
        .and_then(|env| Ok((env, read.map_err(Error::Stdin)?)))
        .and_then(|(env, input)| {
            if input.len() > MAX_CONFIG {
                return Err(Error::ConfigTooLarge(MAX_CONFIG));
            }
            execute(&env, &input, log)
        });
    match outcome {
        Ok(None) => Outcome {
            stdout: Vec::new(),
            exit_code: 0,
        },
        Ok(Some(value)) => Outcome {
            stdout: line(&value),
            exit_code: 0,
        },
        Err(e) => {
            let _ = writeln!(log, "meshsteer-cni: error (code {}): {e}", e.code());
            Outcome {
                stdout: line(&e.to_json(&version)),
                exit_code: 1,
            }
        }
    }
}

fn line(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_default();
    out.push(b'\n');
    out
}

fn execute(env: &Env, input: &[u8], log: &mut dyn Write) -> Result<Option<Value>, Error> {
    match env.command {
        CniCommand::Version => {
            let version = conf::version_of(input).unwrap_or_else(|| FALLBACK_VERSION.into());
            Ok(Some(result::version(&version, SUPPORTED_VERSIONS)))
        }
        CniCommand::Add => add(env, &conf::parse(input)?, log).map(Some),
        CniCommand::Del => del(env, &conf::parse(input)?, log).map(|()| None),
        CniCommand::Check => check(env, &conf::parse(input)?, log).map(|()| None),
        CniCommand::Status => status(&conf::parse(input)?).map(|()| None),
        CniCommand::Gc => {
            // Nothing to collect: the plugin keeps no state of its own, and the agent drops
            // enrolments on DEL and for pods the API server no longer has (its own
            // reconciliation). A GC must never undo a live pod's capture, so it asks nothing.
            conf::parse(input)?;
            Ok(None)
        }
    }
}

/// Enrols the pod, waiting for the agent up to the timeout; prints prevResult back.
fn add(env: &Env, conf: &NetConf, log: &mut dyn Write) -> Result<Value, Error> {
    let container_id = env.container_id()?.to_string();
    let netns = env.netns()?;
    let ifname = env.ifname()?.to_string();
    let pod = args::pod(&env.args)?;
    let prev = conf.prev_result.as_ref().ok_or(Error::NotChained)?;
    let request = Request {
        command: Command::Add,
        pod: pod.clone(),
        container_id,
        netns: Some(netns),
        ifname,
        ips: result::pod_ips(prev)?,
    };
    let reply = client::ask(
        &conf.agent_socket,
        &request,
        Connect::UntilDeadline,
        conf.timeout,
    )?;
    let pod_name = format!("{}/{}", pod.namespace, pod.name);
    match reply {
        Reply::Captured => {
            let _ = writeln!(log, "meshsteer-cni: ADD {pod_name}: captured");
        }
        Reply::NotMeshed { why } => {
            let _ = writeln!(log, "meshsteer-cni: ADD {pod_name}: not meshed ({why})");
        }
        other => return Err(reply_error(request, other)),
    }
    Ok(result::add_success(prev, &conf.cni_version))
}

/// Removes the pod's enrolment. Idempotent, and quick when the agent is away: what it would
/// have removed, it removes itself once back (pods the API no longer has), and the next ADD
/// for the pod replaces any stale enrolment.
fn del(env: &Env, conf: &NetConf, log: &mut dyn Write) -> Result<(), Error> {
    let container_id = env.container_id()?.to_string();
    let ifname = env.ifname()?.to_string();
    // ADD cannot have succeeded without a pod, so nothing of meshsteer's is there.
    let pod = match args::pod(&env.args) {
        Ok(pod) => pod,
        Err(e) => {
            let _ = writeln!(log, "meshsteer-cni: DEL: {e}: no enrolment to remove");
            return Ok(());
        }
    };
    // Best effort: DEL's prevResult may be absent or stale.
    let ips = conf
        .prev_result
        .as_ref()
        .and_then(|p| result::pod_ips(p).ok())
        .unwrap_or_default();
    let request = Request {
        command: Command::Del,
        pod,
        container_id,
        netns: env.netns_if_any(),
        ifname,
        ips,
    };
    match client::ask(
        &conf.agent_socket,
        &request,
        Connect::Once(CONNECT_ONCE),
        conf.timeout,
    ) {
        Ok(Reply::Removed) => Ok(()),
        Ok(other) => Err(reply_error(request, other)),
        Err(e @ ClientError::Unreachable { .. }) => {
            let _ = writeln!(
                log,
                "meshsteer-cni: DEL {}/{}: {e}; succeeding: the agent removes the \
                 enrolment of a pod the API server no longer has when it is back",
                request.pod.namespace, request.pod.name
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Asks the agent whether the pod's capture is in effect.
fn check(env: &Env, conf: &NetConf, _log: &mut dyn Write) -> Result<(), Error> {
    if !conf.has_check() {
        return Err(Error::CheckNeedsVersion(conf.cni_version.clone()));
    }
    let request = Request {
        command: Command::Check,
        container_id: env.container_id()?.to_string(),
        netns: Some(env.netns()?),
        ifname: env.ifname()?.to_string(),
        pod: args::pod(&env.args)?,
        ips: match &conf.prev_result {
            Some(prev) => result::pod_ips(prev)?,
            None => Vec::new(),
        },
    };
    match client::ask(
        &conf.agent_socket,
        &request,
        Connect::Once(CONNECT_ONCE),
        conf.timeout,
    )? {
        Reply::Captured | Reply::NotMeshed { .. } => Ok(()),
        other => Err(reply_error(request, other)),
    }
}

/// STATUS (1.1.0): ready when the agent accepts connections.
fn status(conf: &NetConf) -> Result<(), Error> {
    client::probe(&conf.agent_socket, CONNECT_ONCE).map_err(Error::Unavailable)
}

/// The error for a reply that is not the command's success.
fn reply_error(request: Request, reply: Reply) -> Error {
    let pod = request.pod;
    match (request.command, reply) {
        (_, Reply::Refused { reason }) => Error::Refused { pod, reason },
        (_, Reply::Failed { reason }) => Error::AgentFailed { pod, reason },
        (Command::Check, Reply::Removed) => Error::NotCaptured { pod },
        (command, reply) => Error::UnexpectedReply { command, reply },
    }
}
