#!/usr/bin/env bash
# node-box.sh - a real single Kubernetes node on this machine, with no container engine or kind:
# kube-apiserver v1.20.2 + etcd (the build of tests/k8s-box.sh, on other ports), kube-scheduler,
# kube-controller-manager and a kubelet v1.20.2 built from Debian's `kubernetes` source package, on
# Debian's containerd 1.6 (CRI v1alpha2) + runc 1.1 (cgroupfs driver) and a CNI bridge from
# Debian's containernetworking-plugins.
#
#   node-box.sh build   # apt packages + kubelet, kube-scheduler, kube-controller-manager: ~3 min on
#                       # 2 idle cores, once (cached in $NB_DIR/bin)
#   node-box.sh start   # ~15 s to node Ready; KUBECONFIG=$NB_DIR/kubeconfig (admin token)
#   node-box.sh stop    # ~15 s; idempotent, safe to run when nothing is running
#
# Pods use images imported with `ctr -a $CTR_DIR/containerd.sock -n k8s.io image import` (there is no
# registry: imagePullPolicy Never or IfNotPresent). The sandbox image is made here from busybox-static.
#
# What a running node changes on the host, and stop undoes (whatever way start ended):
# - processes: etcd, kube-apiserver, kube-scheduler, kube-controller-manager, containerd, kubelet and
#   the containerd shims, each stopped by its PID;
# - the bridge cni-box0 (10.244.0.1/24), pod namespaces /run/netns/cni-*, the pods' cgroups
#   (/kubepods in every v1 hierarchy and in cgroup2: the kubelet's v1 cgroup manager never removes
#   the pod directories runc makes in cgroup2 on hybrid hosts);
# - /sys/fs/bpf: made a shared mount (a systemd host's bpffs is shared, and the meshsteer DaemonSet's
#   Bidirectional propagation needs it), or mounted if there was none; restored by stop;
# - the fixed paths /var/log/pods, /var/log/containers, /var/lib/kubelet, /run/containerd (shim
#   sockets), /var/lib/cni (libcni's result cache), /run/meshsteer (the DaemonSet's hostPath: the
#   agent's CNI socket and status file): removed by stop if start created them.
# The runtime's CNI bin dir is $NB_DIR/cni/bin, Debian's plugins linked in, so that the meshsteer
# DaemonSet's install-cni adds meshsteer-cni there and not to /usr/lib/cni.
# Traffic stays on loopback and the bridge: the bridge plugin runs with isGateway=false and
# ipMasq=false (pods get no default route, ip_forward is never enabled), the kubelet with
# makeIPTablesUtilChains=false (no iptables rules), and it is patched never to rewrite host sysctls.
#
# The Debian mirror is read from the machine's own apt configuration, so no host name is written here.
set -euo pipefail

NB_DIR="${NB_DIR:-$HOME/.cache/node-box}"
CTR_DIR="${CTR_DIR:-/run/node-box/containerd}"
APISERVER_BIN="${APISERVER_BIN:-${BOX_DIR:-$HOME/.cache/k8s-box}/bin/kube-apiserver}"   # tests/k8s-box.sh build
ETCD_PORT=33790
ETCD_PEER_PORT=33800
API_PORT=26443
SCHED_PORT=20259
KCM_PORT=20257
KUBELET_PORT=20250
KUBELET_HEALTHZ_PORT=20248
NODE_NAME=box-node
POD_CIDR=10.244.0.0/24
BRIDGE=cni-box0
BRIDGE_IP=10.244.0.1/24
NODE_IP=${BRIDGE_IP%/*}
BPFFS=/sys/fs/bpf
SRC_VER="1.20.5+really1.20.2"
ORIG="kubernetes_${SRC_VER}.orig.tar.gz"
ORIG_SHA256="b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc"   # from the signed .dsc
BINARIES="cmd/kubelet cmd/kube-scheduler cmd/kube-controller-manager"
PACKAGES="containerd runc containernetworking-plugins busybox-static jq golang-1.19-go etcd-server etcd-client
          rsync openssl curl golang-github-modern-go-reflect2-dev"
SOCK="$CTR_DIR/containerd.sock"
RUN="$NB_DIR/run"
CTR=(ctr -a "$SOCK" -n k8s.io)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[node-box] %s\n' "$*" >&2; }
kc() { KUBECONFIG="$NB_DIR/kubeconfig" kubectl "$@"; }
# Mounts of ours (below $CTR_DIR or $NB_DIR), deepest first.
our_mounts() { awk '{print $5}' /proc/self/mountinfo | grep -E "^($CTR_DIR|$NB_DIR)/" | sort -r || true; }

build() {
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  apt-get install -y --no-install-recommends $PACKAGES >/dev/null
  local w missing=0
  for w in $BINARIES; do [[ -x "$NB_DIR/bin/${w##*/}" ]] || missing=1; done
  if ((missing == 0)); then log "already built: $NB_DIR/bin"; return; fi
  mkdir -p "$NB_DIR/bin" "$NB_DIR/src"
  local uri; uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  cd "$NB_DIR/src"
  # The same source tarball as tests/k8s-box.sh's: taken from its cache when it has one.
  local boxed="${BOX_DIR:-$HOME/.cache/k8s-box}/src/$ORIG"
  [[ -f "$ORIG" || ! -f "$boxed" ]] || cp "$boxed" "$ORIG"
  [[ -f "$ORIG" ]] || /usr/lib/apt/apt-helper download-file "$uri/pool/main/k/kubernetes/$ORIG" "$ORIG" >/dev/null
  echo "$ORIG_SHA256  $ORIG" | sha256sum -c - >/dev/null
  rm -rf kubernetes-1.20.2 && tar xzf "$ORIG"
  cd kubernetes-1.20.2
  # As in k8s-box.sh: the vendored reflect2 v1.0.1 segfaults under Go >= 1.18; Debian's 1.0.2 has the fix.
  rm -rf vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
  rm -f vendor/github.com/modern-go/reflect2/go.mod
  # The kubelet rewrites host sysctls at start (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops),
  # or with protectKernelDefaults refuses to start: make it only warn.
  sed -i 's/^\tb := KernelTunableModify$/\tb := KernelTunableWarn \/\/ node-box: never modify host sysctls/' \
    pkg/kubelet/cm/container_manager_linux.go
  grep -q 'b := KernelTunableWarn' pkg/kubelet/cm/container_manager_linux.go
  # providerless: no in-tree cloud providers; dockerless: remote CRI only. Both make the build much smaller.
  PATH=/usr/lib/go-1.19/bin:$PATH CGO_ENABLED=0 HOME="$NB_DIR/home" GOFLAGS=-tags=providerless,dockerless \
    make WHAT="$BINARIES" KUBE_BUILD_PLATFORMS=linux/amd64
  for w in $BINARIES; do cp "_output/bin/${w##*/}" "$NB_DIR/bin/"; done
  cd .. && rm -rf kubernetes-1.20.2          # ~2 GB of build tree
  "$NB_DIR/bin/kubelet" --version
}

# The sandbox ("pause") image: busybox-static sleeping.
pause_image() {
  local out="$NB_DIR/images/localhost-pause-1.tar"
  [[ -f "$out" ]] && return
  local root; root=$(mktemp -d)
  mkdir -p "$root/bin" "$NB_DIR/images"
  cp /bin/busybox "$root/bin/busybox"; ln -s busybox "$root/bin/sleep"
  "$HERE/mkimage.sh" "$root" "$out.part" localhost/node-box/pause:1 '{"Entrypoint":["/bin/sleep","2147483647"]}'
  rm -rf "$root"; mv "$out.part" "$out"
}

pki() {
  local p="$NB_DIR/pki"
  [[ -f "$p/apiserver.crt" ]] && return
  rm -rf "$p"; mkdir -p "$p.part" && cd "$p.part"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=node-box-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > ext.cnf
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile ext.cnf 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  printf 'test-admin-token,admin,admin-uid,"system:masters"\n' > tokens.csv
  cd - >/dev/null && mv "$p.part" "$p"
}

configs() {
  cat > "$NB_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: node-box
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$NB_DIR/pki/ca.crt"}
users:
- name: admin
  user: {token: test-admin-token}
contexts:
- name: admin
  context: {cluster: node-box, user: admin}
current-context: admin
EOF
  mkdir -p "$CTR_DIR" "$NB_DIR/cni/net.d" "$NB_DIR/manifests"
  rm -rf "$NB_DIR/cni/bin"; mkdir -p "$NB_DIR/cni/bin"
  ln -s /usr/lib/cni/* "$NB_DIR/cni/bin/"
  # What a previous run's install-cni added goes: every start has the primary plugin alone.
  rm -f "$NB_DIR"/cni/net.d/*
  cat > "$CTR_DIR/config.toml" <<EOF
version = 2
root = "$CTR_DIR/root"
state = "$CTR_DIR/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/node-box/pause:1"
  # Without CAP_SYS_RESOURCE (missing from some hosts' bounding set) a negative oom_score_adj (CRI's
  # default -998 for sandboxes) makes runc fail with "can't get final child's PID from pipe: EOF"
  # ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied"): clamp to containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$CTR_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$NB_DIR/cni/bin"
    conf_dir = "$NB_DIR/cni/net.d"
EOF
  cat > "$NB_DIR/cni/net.d/10-box.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "box-net",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$NB_DIR/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]]}}
  ]
}
EOF
  cat > "$NB_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
makeIPTablesUtilChains: false
protectKernelDefaults: false
staticPodPath: $NB_DIR/manifests
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
serializeImagePulls: false
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
fileCheckFrequency: 2s
syncFrequency: 10s
EOF
}

# spawn NAME CMD... : runs CMD in the background, its log in $RUN/NAME.log, its PID in $RUN/NAME.pid.
spawn() {
  local name=$1; shift
  "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

# wait_for WHAT TRIES NAME CMD... : polls CMD every 0.2 s while the process NAME lives.
wait_for() {
  local what=$1 tries=$2 name=$3 i; shift 3
  for ((i = 0; i < tries; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null || { log "$name died"; tail -30 "$RUN/$name.log" >&2; return 1; }
    sleep 0.2
  done
  log "no $what after $((tries / 5)) s"; tail -30 "$RUN/$name.log" >&2; return 1
}

# What a systemd host provides: a bpffs at /sys/fs/bpf, in a shared peer group. Recorded for stop.
share_bpffs() {
  if ! mountpoint -q "$BPFFS"; then
    mount -t bpf bpffs "$BPFFS"; echo mounted >"$RUN/bpffs"
  fi
  if ! awk -v m="$BPFFS" '$5 == m' /proc/self/mountinfo | grep -q ' shared:'; then
    mount --make-shared "$BPFFS"; echo shared >>"$RUN/bpffs"
  fi
}

node_ready() {
  [[ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

start() {
  local w
  for w in $BINARIES; do
    [[ -x "$NB_DIR/bin/${w##*/}" ]] || { log "missing $NB_DIR/bin/${w##*/}: run '$0 build'"; return 1; }; done
  [[ -x "$APISERVER_BIN" ]] || { log "missing $APISERVER_BIN: run 'tests/k8s-box.sh build'"; return 1; }
  if [[ -n "$(our_mounts)" || -n "$(ls "$RUN"/*.pid 2>/dev/null)" ]]; then
    log "a previous node-box is still running or left mounts: run '$0 stop' first"; return 1; fi
  local p="$NB_DIR/pki" d
  pki; configs; pause_image
  mkdir -p "$RUN"; rm -rf "$RUN/etcd-data" "$NB_DIR/cni/ipam" "$NB_DIR/kubelet"
  # Fixed host paths the runtime and kubelet write to: remembered if they are new, for stop to remove.
  for d in /run/containerd /var/lib/cni /var/log/pods /var/log/containers /var/lib/kubelet /run/meshsteer; do
    [[ -e $d ]] || echo "$d" >>"$RUN/created-dirs"; done
  mountpoint -q /run/netns || echo /run/netns >"$RUN/netns-dir-unmounted"   # containerd may self-bind it
  share_bpffs

  spawn etcd etcd --name nodebox --data-dir "$RUN/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "nodebox=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_for etcd 300 etcd etcdctl --endpoints="127.0.0.1:$ETCD_PORT" endpoint health
  # The kubelet refuses a loopback node IP ("nodeIP can't be loopback address"), and without an
  # InternalIP logs and exec do not work: the node IP is the bridge's host address, and the API
  # server reaches the kubelet there. ServiceAccount admission is on: pods get their token, as in-cluster
  # clients (the meshsteer DaemonSet) expect.
  spawn apiserver "$APISERVER_BIN" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" --token-auth-file="$p/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
    --kubelet-preferred-address-types=InternalIP \
    --cert-dir="$RUN/certs" --allow-privileged=true
  wait_for "API server" 1500 apiserver curl -sf --cacert "$p/ca.crt" -H 'Authorization: Bearer test-admin-token' \
    "https://127.0.0.1:$API_PORT/readyz"
  log "API server ready on 127.0.0.1:$API_PORT"

  # DaemonSets need both the scheduler and the controller manager in 1.20. The controller manager's
  # token controller signs the service accounts' tokens.
  local cp=(--kubeconfig="$NB_DIR/kubeconfig" --authentication-kubeconfig="$NB_DIR/kubeconfig"
            --authorization-kubeconfig="$NB_DIR/kubeconfig" --leader-elect=false --bind-address=127.0.0.1 --port=0)
  spawn sched "$NB_DIR/bin/kube-scheduler" "${cp[@]}" --secure-port=$SCHED_PORT --cert-dir="$RUN/sched-certs"
  spawn kcm "$NB_DIR/bin/kube-controller-manager" "${cp[@]}" --secure-port=$KCM_PORT --cert-dir="$RUN/kcm-certs" \
    --use-service-account-credentials=false --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --controllers='*,-nodeipam,-service,-route,-cloud-node-lifecycle,-attachdetach,-persistentvolume-binder,-persistentvolume-expander'

  # The pod network: the bridge made beforehand with the gateway address, so the host reaches pods
  # without ip_forward or NAT.
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$BRIDGE_IP" dev "$BRIDGE"; ip link set "$BRIDGE" up

  spawn containerd containerd --config "$CTR_DIR/config.toml"
  wait_for containerd 300 containerd ctr -a "$SOCK" version
  "${CTR[@]}" image import "$NB_DIR/images/localhost-pause-1.tar" >/dev/null
  log "containerd ready"

  spawn kubelet "$NB_DIR/bin/kubelet" --config="$NB_DIR/kubelet-config.yaml" --kubeconfig="$NB_DIR/kubeconfig" \
    --root-dir="$NB_DIR/kubelet" --cert-dir="$NB_DIR/kubelet/pki" \
    --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" --image-service-endpoint="unix://$SOCK" \
    --runtime-request-timeout=2m --pod-infra-container-image=localhost/node-box/pause:1 \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" -v=2
  wait_for "Ready node" 1500 kubelet node_ready
  log "node $NODE_NAME Ready: KUBECONFIG=$NB_DIR/kubeconfig"
}

killpid() {  # killpid NAME: SIGTERM the PID in $RUN/NAME.pid, up to 10 s, then SIGKILL
  local f="$RUN/$1.pid" pid s=$SECONDS
  pid=$(cat "$f" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"; log "stopped $1 ($((SECONDS - s)) s)"
}

rmcg() {  # removes a cgroup subtree, deepest first (only empty directories can go)
  [[ -d "$1" ]] || return 0
  find "$1" -depth -type d -exec rmdir {} \; 2>/dev/null || true
}

stop() {
  set +e   # every step runs, whatever the one before left
  local i t m
  # 1. No more pods made: static manifests away, controllers and scheduler stopped.
  if [[ -d "$NB_DIR/manifests" ]]; then
    rm -rf "$NB_DIR/manifests.off"; mv "$NB_DIR/manifests" "$NB_DIR/manifests.off"; mkdir -p "$NB_DIR/manifests"; fi
  killpid kcm; killpid sched
  # 2. Every pod deleted while the kubelet runs, so it tears sandboxes down (CNI DEL, netns removed).
  if [[ -f "$RUN/kubelet.pid" && -f "$RUN/apiserver.pid" ]]; then
    kc delete pods --all -A --grace-period=1 --wait=false >/dev/null 2>&1
    for i in $(seq 1 30); do [[ -z "$("${CTR[@]}" task ls -q 2>/dev/null)" ]] && break; sleep 1; done
    log "pods gone after ${i} s"
  fi
  killpid kubelet
  # 3. What is left in containerd: sandbox netns paths remembered, tasks killed (or their shims
  #    outlive containerd).
  local netns=()
  if [[ -f "$RUN/containerd.pid" ]]; then
    for t in $("${CTR[@]}" c ls -q 2>/dev/null); do
      m=$("${CTR[@]}" c info "$t" 2>/dev/null | jq -r '.Spec.linux.namespaces[]? | select(.type=="network") | .path // empty')
      [[ -n "$m" ]] && netns+=("$m")
    done
    for t in $("${CTR[@]}" task ls -q 2>/dev/null); do "${CTR[@]}" task kill -s KILL "$t" 2>/dev/null; done
    sleep 1
    for t in $("${CTR[@]}" task ls -q 2>/dev/null); do "${CTR[@]}" task rm -f "$t" >/dev/null 2>&1; done
  fi
  killpid containerd; killpid apiserver; killpid etcd
  # 4. Mounts (overlay rootfs, shm, the kubelet's rshared root-dir bind, secret tmpfs), netns, bridge.
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  for m in "${netns[@]}"; do m=${m/#\/var\/run/\/run}; [[ -e "$m" ]] && { umount "$m" 2>/dev/null; rm -f "$m"; }; done
  if [[ -f "$RUN/netns-dir-unmounted" ]] && mountpoint -q /run/netns && [[ -z "$(ls -A /run/netns)" ]]; then
    umount /run/netns; fi
  rm -f "$RUN/netns-dir-unmounted"
  ip link del "$BRIDGE" 2>/dev/null
  # 5. Cgroups: the kubelet's v1 cgroup manager never removes the pod directories runc made in cgroup2.
  for m in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do rmcg "$m"; done
  if [[ -f "$RUN/created-dirs" ]]; then xargs rm -rf <"$RUN/created-dirs"; rm -f "$RUN/created-dirs"; fi
  # 6. /sys/fs/bpf as it was.
  if [[ -f "$RUN/bpffs" ]]; then
    grep -qx shared "$RUN/bpffs" && mount --make-private "$BPFFS"
    grep -qx mounted "$RUN/bpffs" && umount "$BPFFS"
    rm -f "$RUN/bpffs"
  fi
  # 7. Fresh state next time, once nothing of ours is mounted any more.
  if [[ -z "$(our_mounts)" ]]; then
    rm -rf "$CTR_DIR/root" "$CTR_DIR/state" "$CTR_DIR/runc" "$NB_DIR/kubelet" "$NB_DIR/cni/ipam"
    rm -f "$SOCK" "$SOCK.ttrpc"
  else
    log "mounts left under $CTR_DIR or $NB_DIR:"; our_mounts >&2; return 1
  fi
}

case "${1:-}" in
  build) build ;;
  start)
    # A start that fails (or is interrupted) leaves nothing running.
    trap 'rc=$?; if ((rc != 0)); then log "start failed: stopping"; stop; fi' EXIT
    trap 'exit 130' INT TERM
    start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
