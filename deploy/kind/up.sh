#!/usr/bin/env bash
# meshsteer on a local kind cluster, end to end: a 3-worker cluster, the agent's image built and
# loaded, the DaemonSet, Istio without istio-init, nginx ×3 behind the ingress gateway, and a
# request through the gateway that crosses the gateway and an nginx sidecar captured by
# meshsteer. Run it on your own machine (it needs a container engine):
#
#   deploy/kind/up.sh          # CLUSTER=meshsteer IMAGE=meshsteer:dev by default
#   kind delete cluster --name meshsteer
#
# Needs on PATH: docker, kind, kubectl, istioctl, curl.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
CLUSTER=${CLUSTER:-meshsteer}
IMAGE=${IMAGE:-meshsteer:dev}

step() { printf '\n=== %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

for tool in docker kind kubectl istioctl curl; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done

step "kind cluster $CLUSTER (1 control plane, 3 workers)"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config "$here/cluster.yaml"
fi
kubectl config use-context "kind-$CLUSTER"

step "agent image $IMAGE"
docker build -f "$repo/deploy/Dockerfile" -t "$IMAGE" "$repo"
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "meshsteer DaemonSet"
# -k: deploy/kustomization.yaml applies the namespace first (-f would go by file name).
kubectl apply -k "$repo/deploy"
kubectl -n meshsteer set image daemonset/meshsteer \
  bpffs="$IMAGE" agent="$IMAGE" install-cni="$IMAGE"
kubectl -n meshsteer rollout status daemonset/meshsteer --timeout=300s

step "the CNI plugin on each node (every pod from here on is captured from its first instruction)"
for node in $(kind get nodes --name "$CLUSTER"); do
  ok=
  for _ in $(seq 1 30); do
    if docker exec "$node" sh -c 'grep -l "\"meshsteer-cni\"" /etc/cni/net.d/*' &&
      docker exec "$node" test -x /opt/cni/bin/meshsteer-cni; then ok=1; break; fi
    sleep 1
  done
  [[ -n $ok ]] || die "meshsteer-cni is not installed on $node (see: kubectl -n meshsteer logs -c install-cni)"
done

step "Istio, with meshsteer in place of istio-init"
istioctl install -y -f "$here/istio.yaml"

step "nginx ×3, gateway, virtual service"
kubectl label namespace default istio-injection=enabled --overwrite
kubectl apply -f "$here/demo.yaml"
kubectl rollout status deployment/nginx --timeout=300s
inits=$(kubectl get pods -l app=nginx -o jsonpath='{.items[*].spec.initContainers[*].name}')
[[ $inits != *istio-init* ]] || die "nginx pods still have istio-init (init containers: $inits)"

step "curl through the ingress gateway"
ok=
for _ in $(seq 1 60); do
  if curl -sf -o /dev/null http://127.0.0.1:8080/; then ok=1; break; fi
  sleep 2
done
[[ -n $ok ]] || die "no answer from http://127.0.0.1:8080/ through the gateway"
curl -sS -D - -o /dev/null http://127.0.0.1:8080/   # `server: istio-envoy`: the sidecar answered

step "meshsteer status on each node (the nginx pods: ready, with capture counters)"
for pod in $(kubectl -n meshsteer get pods -o name); do
  echo "--- $pod"
  kubectl -n meshsteer exec "$pod" -- meshsteer status
done
