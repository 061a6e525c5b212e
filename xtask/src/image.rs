//! `cargo xtask image`: the OCI image archives the real-node test (tests/node-box) runs, built
//! from the workspace and from files of installed Debian packages, with no registry and no
//! container engine. Each image is one layer: a directory assembled here, packed by
//! `tests/node-box/mkimage.sh` (reproducibly: sorted names, zero mtimes, gzip without a
//! timestamp). `ctr -n k8s.io image import <archive>` loads them under their names.
//!
//! - `meshsteer:dev`: the release agent and the shared libraries it links, its static CNI
//!   plugin beside it, with
//!   `deploy/Dockerfile`'s entrypoint and arguments;
//! - `meshsteer-test/nginx`: Debian's nginx (the app);
//! - `meshsteer-test/curl`: Debian's curl and busybox-static's `sleep` (the client);
//! - `meshsteer-test/istio-proxy`: Debian's HAProxy as uid/gid 1337 (the sidecar).
//!
//! The app's and the sidecar's configuration are not in the images: the test writes them
//! (from the same code that configures them in the other tests) into ConfigMaps.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::agent;
use crate::process::run;
use crate::workspace::host_target_dir;

/// The uid and gid Istio's proxy runs as, which the capture exempts.
const PROXY_ID: u32 = 1337;

/// Debian packages whose files go into the images (installed by `cargo xtask setup --test-deps`).
pub const PACKAGES: &[&str] = &["nginx-light", "curl", "haproxy", "busybox-static", "jq"];

/// What puts an image's files into its root directory.
type Fill = Box<dyn Fn(&Path) -> Result<()>>;

/// One image: its archive's file name, the name it is imported under, its image config.
struct Spec {
    file: &'static str,
    name: &'static str,
    config: String,
}

/// Builds every image into `target/images` and returns that directory.
pub fn build_all(root: &Path) -> Result<PathBuf> {
    let agent = agent::build(root, true)?;
    let plugin = agent::build_cni_plugin(root, true)?;
    let out = host_target_dir(root).join("images");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mkimage = root.join("tests/node-box/mkimage.sh");
    let passwd = format!(
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
         istio-proxy:x:{PROXY_ID}:{PROXY_ID}:istio-proxy:/tmp:/bin/false\n"
    );
    // nginx, started as root, looks its default user up even without a master process.
    let group = format!("root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\nistio-proxy:x:{PROXY_ID}:\n");

    let images: Vec<(Spec, Fill)> = vec![
        (
            Spec {
                file: "meshsteer.tar",
                name: "localhost/meshsteer:dev",
                config: r#"{"Entrypoint":["/usr/local/bin/meshsteer"],"Cmd":["run","--kubernetes"]}"#
                    .into(),
            },
            Box::new(move |r: &Path| {
                base(r, None)?;
                add_file(r, &agent, Path::new("/usr/local/bin/meshsteer"))?;
                // Next to `meshsteer`, where `install-cni` looks for it; static, as it runs
                // on the node.
                add_file(r, &plugin, Path::new("/usr/local/bin/meshsteer-cni"))?;
                add_libraries(r, &agent)
            }),
        ),
        (
            Spec {
                file: "nginx.tar",
                name: "localhost/meshsteer-test/nginx:1",
                // The configuration comes from a ConfigMap at /etc/meshsteer-test.
                config: r#"{"Entrypoint":["/usr/sbin/nginx","-e","stderr","-p","/tmp","-c","/etc/meshsteer-test/nginx.conf","-g","daemon off;"]}"#.into(),
            },
            {
                let (passwd, group) = (passwd.clone(), group.clone());
                Box::new(move |r: &Path| {
                    base(r, Some((&passwd, &group)))?;
                    add_program(r, Path::new("/usr/sbin/nginx"))
                })
            },
        ),
        (
            Spec {
                file: "curl.tar",
                name: "localhost/meshsteer-test/curl:1",
                config: r#"{"Entrypoint":["/bin/sleep","2147483647"]}"#.into(),
            },
            {
                let (passwd, group) = (passwd.clone(), group.clone());
                Box::new(move |r: &Path| {
                    base(r, Some((&passwd, &group)))?;
                    add_program(r, Path::new("/usr/bin/curl"))?;
                    add_busybox(r, &["sh", "sleep"])
                })
            },
        ),
        (
            Spec {
                file: "istio-proxy.tar",
                name: "localhost/meshsteer-test/istio-proxy:1",
                // The configuration comes from a ConfigMap at /etc/istio-proxy.
                config: format!(
                    r#"{{"User":"{PROXY_ID}:{PROXY_ID}","Entrypoint":["/usr/sbin/haproxy","-db","-f","/etc/istio-proxy/haproxy.cfg"]}}"#
                ),
            },
            Box::new(move |r: &Path| {
                base(r, Some((&passwd, &group)))?;
                add_program(r, Path::new("/usr/sbin/haproxy"))
            }),
        ),
    ];

    for (spec, fill) in images {
        let rootfs = out.join(format!("{}.rootfs", spec.file.trim_end_matches(".tar")));
        if rootfs.exists() {
            fs::remove_dir_all(&rootfs)?;
        }
        fs::create_dir_all(&rootfs)?;
        fill(&rootfs).with_context(|| format!("assembling {}", spec.name))?;
        let archive = out.join(spec.file);
        run(Command::new("bash")
            .arg(&mkimage)
            .arg(&rootfs)
            .arg(&archive)
            .arg(spec.name)
            .arg(&spec.config))?;
        fs::remove_dir_all(&rootfs)?;
    }
    Ok(out)
}

/// The directories every image has (`/tmp` world-writable), and `/etc/passwd` and
/// `/etc/group` where an image needs names.
fn base(root: &Path, names: Option<(&str, &str)>) -> Result<()> {
    for dir in ["etc", "tmp", "proc", "sys", "dev", "run"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    if let Some((passwd, group)) = names {
        fs::write(root.join("etc/passwd"), passwd)?;
        fs::write(root.join("etc/group"), group)?;
        fs::write(
            root.join("etc/nsswitch.conf"),
            "passwd: files\ngroup: files\nhosts: files\n",
        )?;
    }
    Ok(())
}

/// A program of an installed Debian package, checked to be one, and its libraries.
fn add_program(root: &Path, path: &Path) -> Result<()> {
    let owner = Command::new("dpkg")
        .arg("-S")
        .arg(path)
        .output()
        .context("running dpkg -S")?;
    if !owner.status.success() {
        bail!(
            "{} belongs to no installed Debian package (run `cargo xtask setup --test-deps`)",
            path.display()
        );
    }
    add_file(root, path, path)?;
    add_libraries(root, path)
}

/// busybox-static's binary with links for `applets`.
fn add_busybox(root: &Path, applets: &[&str]) -> Result<()> {
    add_file(root, Path::new("/bin/busybox"), Path::new("/bin/busybox"))?;
    for applet in applets {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(())
}

/// Copies `src` to `dest` inside `root` (contents, following links; mode kept).
fn add_file(root: &Path, src: &Path, dest: &Path) -> Result<()> {
    let target = root.join(dest.strip_prefix("/").unwrap_or(dest));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(src, &target)
        .with_context(|| format!("copying {} to {}", src.display(), target.display()))?;
    Ok(())
}

/// The shared libraries `binary` loads (as `ldd` resolves them on this machine, the dynamic
/// loader included), each at the path it was found at.
fn add_libraries(root: &Path, binary: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", binary.display());
    }
    for lib in ldd_paths(&String::from_utf8_lossy(&out.stdout)) {
        add_file(root, Path::new(lib), Path::new(lib))?;
    }
    Ok(())
}

/// The library paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x…)` and the loader's
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
fn ldd_paths(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            path.split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            ldd_paths(out),
            [
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
