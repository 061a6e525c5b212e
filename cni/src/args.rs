//! CNI_ARGS: `;`-separated `KEY=VALUE` pairs, of which the plugin needs the pod's identity.

use std::collections::BTreeMap;

use crate::proto::PodRef;

/// The keys a Kubernetes runtime (the kubelet through CRI) sets for every pod sandbox.
pub const POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
pub const POD_NAME: &str = "K8S_POD_NAME";
pub const POD_UID: &str = "K8S_POD_UID";

/// CNI_ARGS that do not parse, or that do not name a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("CNI_ARGS: `{0}` is not KEY=VALUE")]
    NotAPair(String),
    #[error("CNI_ARGS: {0} is given more than once")]
    Duplicate(String),
    #[error("CNI_ARGS: {0} is missing (meshsteer-cni only serves Kubernetes pods)")]
    Missing(&'static str),
    #[error("CNI_ARGS: {0} is empty")]
    Empty(&'static str),
}

/// Every pair of `args`. Empty segments (`A=1;;B=2`, a trailing `;`) are skipped; a segment
/// without `=`, an empty key, or a key given twice is an error: the pod's identity must not
/// depend on which of two values wins.
pub fn parse(args: &str) -> Result<BTreeMap<&str, &str>, ArgsError> {
    let mut pairs = BTreeMap::new();
    for segment in args.split(';').filter(|s| !s.is_empty()) {
        let (key, value) = segment
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| ArgsError::NotAPair(segment.to_string()))?;
        if pairs.insert(key, value).is_some() {
            return Err(ArgsError::Duplicate(key.to_string()));
        }
    }
    Ok(pairs)
}

/// The pod named by `args`.
pub fn pod(args: &str) -> Result<PodRef, ArgsError> {
    let pairs = parse(args)?;
    let get = |key: &'static str| match pairs.get(key) {
        None => Err(ArgsError::Missing(key)),
        Some(&"") => Err(ArgsError::Empty(key)),
        Some(v) => Ok(v.to_string()),
    };
    Ok(PodRef {
        namespace: get(POD_NAMESPACE)?,
        name: get(POD_NAME)?,
        uid: get(POD_UID)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBELET: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;\
                           K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0f9a-11";

    #[test]
    fn the_kubelets_args_name_the_pod() {
        assert_eq!(
            pod(KUBELET).unwrap(),
            PodRef {
                namespace: "shop".into(),
                name: "cart-0".into(),
                uid: "0f9a-11".into()
            }
        );
        let pairs = parse(KUBELET).unwrap();
        assert_eq!(pairs.len(), 5);
        assert_eq!(pairs["IgnoreUnknown"], "1");
    }

    #[test]
    fn empty_segments_are_skipped_and_values_may_hold_equals() {
        let pairs = parse(";A=1;;B=x=y;").unwrap();
        assert_eq!(
            pairs.into_iter().collect::<Vec<_>>(),
            [("A", "1"), ("B", "x=y")]
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_args_are_errors() {
        assert_eq!(parse("A=1;B"), Err(ArgsError::NotAPair("B".into())));
        assert_eq!(parse("=1"), Err(ArgsError::NotAPair("=1".into())));
        assert_eq!(
            parse("K8S_POD_NAME=a;K8S_POD_NAME=b"),
            Err(ArgsError::Duplicate("K8S_POD_NAME".into()))
        );
    }

    #[test]
    fn a_pod_needs_all_three_keys_non_empty() {
        assert_eq!(
            pod("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"),
            Err(ArgsError::Missing(POD_UID))
        );
        assert_eq!(pod(""), Err(ArgsError::Missing(POD_NAMESPACE)));
        assert_eq!(
            pod("K8S_POD_NAMESPACE=a;K8S_POD_NAME=;K8S_POD_UID=c"),
            Err(ArgsError::Empty(POD_NAME))
        );
        assert_eq!(
            pod("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=c")
                .unwrap()
                .uid,
            "c"
        );
    }
}
