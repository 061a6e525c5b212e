#!/usr/bin/env bash
# mkimage.sh ROOTFS OUT.tar NAME CONFIG-JSON: an OCI image archive of one layer (the directory ROOTFS)
# that `ctr -n k8s.io image import OUT.tar` loads as NAME (the io.containerd.image.name annotation),
# with no registry and no container engine. CONFIG-JSON is the image config's "config" object
# (Entrypoint, Cmd, User, Env, WorkingDir). Reproducible: the same ROOTFS and CONFIG-JSON give the same
# bytes (owners 0:0 unless set in ROOTFS, mtimes 0, sorted names, gzip without a timestamp).
set -euo pipefail
[[ $# == 4 ]] || { echo "usage: $0 ROOTFS OUT.tar NAME CONFIG-JSON" >&2; exit 2; }
root=$1 out=$2 name=$3 config=$4
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
L=$w/oci; mkdir -p "$L/blobs/sha256"
blob() {  # blob FILE: moves FILE into the layout, prints "DIGEST SIZE"
  local d s; d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  mv "$1" "$L/blobs/sha256/$d"; echo "$d $s"
}
tar --numeric-owner --mtime=@0 --sort=name --format=gnu -C "$root" -cf "$w/layer.tar" .
diffid=$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
gzip -n -c "$w/layer.tar" >"$w/layer.tgz"; rm "$w/layer.tar"
read -r ld ls < <(blob "$w/layer.tgz")
jq -cn --argjson c "$config" --arg d "sha256:$diffid" \
  '{architecture:"amd64",os:"linux",config:$c,rootfs:{type:"layers",diff_ids:[$d]}}' >"$w/config.json"
read -r cd cs < <(blob "$w/config.json")
jq -cn --arg cd "sha256:$cd" --argjson cs "$cs" --arg ld "sha256:$ld" --argjson ls "$ls" \
  '{schemaVersion:2,mediaType:"application/vnd.oci.image.manifest.v1+json",
    config:{mediaType:"application/vnd.oci.image.config.v1+json",digest:$cd,size:$cs},
    layers:[{mediaType:"application/vnd.oci.image.layer.v1.tar+gzip",digest:$ld,size:$ls}]}' >"$w/manifest.json"
read -r md ms < <(blob "$w/manifest.json")
jq -cn --arg md "sha256:$md" --argjson ms "$ms" --arg name "$name" --arg tag "${name##*:}" \
  '{schemaVersion:2,manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$md,size:$ms,
    platform:{architecture:"amd64",os:"linux"},
    annotations:{"io.containerd.image.name":$name,"org.opencontainers.image.ref.name":$tag}}]}' >"$L/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$L" -cf "$out" oci-layout index.json blobs
echo "$out: $name sha256:$md"
