//! meshsteer-cni on the node, as istio-cni's install-cni puts istio-cni there: the binary in
//! the CNI bin dir, and its entry last in the primary network configuration of the CNI conf
//! dir, the file the runtime uses. Every write is atomic (a hidden `.tmp` file in the same
//! directory, which no runtime reads, fsynced, then renamed over), so a runtime never reads a
//! half-written file, and a file that is refused is not written at all.
use std::{
    ffi::OsStr,
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::conflist::{self, ConfError, Entry, PLUGIN_TYPE};

/// The extensions of network configurations, as libcni lists them for containerd and CRI-O
/// (and the kubelet's dockershim did): the runtime uses the first file, in lexical order.
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", .path.display())]
    Conf { path: PathBuf, source: ConfError },
    #[error("no CNI network configuration (*.conflist, *.conf, *.json) in {}", .0.display())]
    NoConfig(PathBuf),
    #[error(
        "{} cannot become {}: {} would then come first and be the runtime's configuration",
        .from.display(), .to.display(), .first.display()
    )]
    Shadowed {
        from: PathBuf,
        to: PathBuf,
        first: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn conf_err(path: &Path) -> impl FnOnce(ConfError) -> InstallError + '_ {
    move |source| InstallError::Conf {
        path: path.to_path_buf(),
        source,
    }
}

/// What an install did to the configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The entry was there already, as configured.
    Unchanged(PathBuf),
    /// The entry was added or updated.
    Written(PathBuf),
    /// A single-plugin file became a conflist with the entry.
    Converted { from: PathBuf, to: PathBuf },
}

fn is_config(name: &OsStr) -> bool {
    Path::new(name)
        .extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| EXTENSIONS.contains(&e))
}

/// The configuration files of `conf_dir`, in the runtime's order.
fn configs(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files = Vec::new();
    for e in fs::read_dir(conf_dir).map_err(io_err(conf_dir))? {
        let e = e.map_err(io_err(conf_dir))?;
        if is_config(&e.file_name()) && !e.file_type().is_ok_and(|t| t.is_dir()) {
            files.push(e.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The primary configuration: `name` if given (or the `.conflist` made from it), else the
/// first file in lexical order, which the runtime uses. None: there is none (yet).
pub fn primary(conf_dir: &Path, name: Option<&str>) -> Result<Option<PathBuf>, InstallError> {
    let Some(name) = name else {
        return Ok(configs(conf_dir)?.into_iter().next());
    };
    let path = conf_dir.join(name);
    if path.exists() {
        return Ok(Some(path));
    }
    let list = path.with_extension("conflist");
    Ok((path.extension() != Some(OsStr::new("conflist")) && list.exists()).then_some(list))
}

fn read(path: &Path) -> Result<(String, u32), InstallError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let mode = fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode()
        & 0o7777;
    Ok((text, mode))
}

/// Puts `entry` last in the primary configuration (see [`primary`]); a single-plugin file is
/// converted to a `.conflist` ([`conflist::convert`]). Nothing is written when it is there.
pub fn install(
    conf_dir: &Path,
    name: Option<&str>,
    entry: &Entry,
) -> Result<Installed, InstallError> {
    let path = primary(conf_dir, name)?.ok_or_else(|| InstallError::NoConfig(conf_dir.into()))?;
    let (text, mode) = read(&path)?;
    if path.extension() == Some(OsStr::new("conflist")) {
        return Ok(
            match conflist::install(&text, entry).map_err(conf_err(&path))? {
                None => Installed::Unchanged(path),
                Some(new) => {
                    write_atomic(&path, new.as_bytes(), mode)?;
                    Installed::Written(path)
                }
            },
        );
    }
    let file_name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
    let list = conflist::convert(&text, file_name).map_err(conf_err(&path))?;
    let new = conflist::install(&list, entry)
        .map_err(conf_err(&path))?
        .unwrap_or(list);
    let to = path.with_extension("conflist");
    // `x.conf` and `x.conflist` need not be neighbours (`x.conf.d.json` sorts between).
    let first = configs(conf_dir)?
        .into_iter()
        .find(|f| *f != path)
        .filter(|f| *f < to);
    if let Some(first) = first {
        return Err(InstallError::Shadowed {
            from: path,
            to,
            first,
        });
    }
    // The list first: until the old file goes, it still comes first, as before the install.
    write_atomic(&to, new.as_bytes(), mode)?;
    fs::remove_file(&path).map_err(io_err(&path))?;
    sync_dir(conf_dir)?;
    Ok(Installed::Converted { from: path, to })
}

/// Whether the entry is in the primary configuration as configured.
pub fn installed(conf_dir: &Path, name: Option<&str>, entry: &Entry) -> bool {
    primary(conf_dir, name).ok().flatten().is_some_and(|p| {
        p.extension() == Some(OsStr::new("conflist"))
            && read(&p).is_ok_and(|(t, _)| conflist::install(&t, entry).is_ok_and(|e| e.is_none()))
    })
}

/// Takes meshsteer-cni's entry out of every conflist of `conf_dir` that has it, leaving each
/// byte for byte as it was before; a conflist made from a single-plugin file becomes that
/// file again. The files changed.
pub fn uninstall(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = Vec::new();
    for path in configs(conf_dir)? {
        if path.extension() != Some(OsStr::new("conflist")) {
            continue;
        }
        let (text, mode) = read(&path)?;
        if !text.contains(PLUGIN_TYPE) && !text.contains(conflist::CONVERTED_FROM) {
            continue;
        }
        let removed = conflist::remove(&text).map_err(conf_err(&path))?;
        let now = removed.as_deref().unwrap_or(&text);
        match conflist::converted(now).map_err(conf_err(&path))? {
            Some((name, original))
                if is_config(OsStr::new(&name)) && !name.contains('/') && name != ".." =>
            {
                let back = conf_dir.join(&name);
                write_atomic(&back, original.as_bytes(), mode)?;
                fs::remove_file(&path).map_err(io_err(&path))?;
                sync_dir(conf_dir)?;
                changed.push(back);
            }
            _ => {
                if let Some(new) = removed {
                    write_atomic(&path, new.as_bytes(), mode)?;
                    changed.push(path);
                }
            }
        }
    }
    Ok(changed)
}

/// The conflists of `conf_dir` that meshsteer-cni's entry (or a conversion) is still in.
pub fn leftovers(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    Ok(configs(conf_dir)?
        .into_iter()
        .filter(|p| p.extension() == Some(OsStr::new("conflist")))
        .filter(|p| {
            fs::read_to_string(p).is_ok_and(|t| {
                conflist::remove(&t).is_ok_and(|r| r.is_some())
                    || conflist::converted(&t).is_ok_and(|c| c.is_some())
            })
        })
        .collect())
}

/// Copies `src` to `<bin_dir>/meshsteer-cni` (mode 0755) unless it is there with the same
/// bytes; whether it copied. A plugin the runtime runs meanwhile is the old file or the new,
/// never a mix.
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<bool, InstallError> {
    let dest = bin_dir.join(PLUGIN_TYPE);
    let bytes = fs::read(src).map_err(io_err(src))?;
    let same = fs::read(&dest).is_ok_and(|b| b == bytes)
        && fs::metadata(&dest).is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o755);
    if same {
        return Ok(false);
    }
    write_atomic(&dest, &bytes, 0o755)?;
    Ok(true)
}

/// Whether `<bin_dir>/meshsteer-cni` looks like `src` (same size: a cheap check for a poll).
pub fn binary_present(src: &Path, bin_dir: &Path) -> bool {
    match (fs::metadata(src), fs::metadata(bin_dir.join(PLUGIN_TYPE))) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    }
}

/// Removes `<bin_dir>/meshsteer-cni`; whether it was there.
pub fn remove_binary(bin_dir: &Path) -> Result<bool, InstallError> {
    let path = bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Replaces `path` with `bytes`, mode `mode`, atomically.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.meshsteer-{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask does not get a say.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The installer's lock: a flock on the conf dir, held by the one `install-cni` that watches
/// it (an uninstall finds it there, in /proc/locks).
#[derive(Debug)]
pub struct ConfDirLock {
    _dir: File,
}

impl ConfDirLock {
    /// The lock, or None when another process holds it.
    pub fn try_acquire(conf_dir: &Path) -> Result<Option<Self>, InstallError> {
        let dir = File::open(conf_dir).map_err(io_err(conf_dir))?;
        match dir.try_lock() {
            Ok(()) => Ok(Some(Self { _dir: dir })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(io_err(conf_dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("ms-cniconf-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Self(d)
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }

        fn names(&self) -> Vec<String> {
            let mut n: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const LIST: &str = "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"pods\",\n  \"plugins\": [\n    {\"type\": \"bridge\"}\n  ]\n}\n";

    fn entry() -> Entry {
        Entry {
            agent_socket: "/run/meshsteer/cni.sock".into(),
        }
    }

    #[test]
    fn the_first_file_in_lexical_order_is_primary() {
        let d = Dir::new("primary");
        assert_eq!(primary(&d.0, None).unwrap(), None);
        d.write("20-b.conflist", LIST, 0o644);
        d.write("10-a.json", "{}", 0o644);
        d.write("05-z.conflist.bak", LIST, 0o644);
        d.write(".05-hidden.tmp", LIST, 0o644);
        fs::create_dir(d.0.join("00-dir.conf")).unwrap();
        assert_eq!(primary(&d.0, None).unwrap(), Some(d.0.join("10-a.json")));
        d.write("10-a.conf", "{}", 0o644);
        assert_eq!(primary(&d.0, None).unwrap(), Some(d.0.join("10-a.conf")));
        assert_eq!(
            primary(&d.0, Some("20-b.conflist")).unwrap(),
            Some(d.0.join("20-b.conflist"))
        );
        assert_eq!(primary(&d.0, Some("30-c.conflist")).unwrap(), None);
        // A .conf named on the command line, converted since.
        assert_eq!(
            primary(&d.0, Some("20-b.conf")).unwrap(),
            Some(d.0.join("20-b.conflist"))
        );
    }

    #[test]
    fn installed_into_the_primary_with_its_mode_then_uninstalled_to_the_byte() {
        let d = Dir::new("install");
        let p = d.write("10-pods.conflist", LIST, 0o640);
        d.write("20-other.conflist", LIST, 0o644);
        assert_eq!(
            install(&d.0, None, &entry()).unwrap(),
            Installed::Written(p.clone())
        );
        assert!(installed(&d.0, None, &entry()));
        let text = fs::read_to_string(&p).unwrap();
        assert!(
            text.contains(r#"{"type":"meshsteer-cni","agentSocket":"/run/meshsteer/cni.sock"}"#)
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(
            fs::read_to_string(d.0.join("20-other.conflist")).unwrap(),
            LIST
        );
        // Idempotent: not even rewritten.
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap());
        assert_eq!(
            install(&d.0, None, &entry()).unwrap(),
            Installed::Unchanged(p.clone())
        );
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap()),
            ino
        );
        // A changed socket updates the entry, once.
        let other = Entry {
            agent_socket: "/run/other.sock".into(),
        };
        assert_eq!(
            install(&d.0, None, &other).unwrap(),
            Installed::Written(p.clone())
        );
        assert!(!installed(&d.0, None, &entry()));
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text.matches(PLUGIN_TYPE).count(), 1, "{text}");
        assert!(text.contains("/run/other.sock"));
        assert_eq!(uninstall(&d.0).unwrap(), vec![p.clone()]);
        assert_eq!(fs::read_to_string(&p).unwrap(), LIST);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(uninstall(&d.0).unwrap(), Vec::<PathBuf>::new());
        assert_eq!(
            d.names(),
            ["10-pods.conflist", "20-other.conflist"],
            "no temp file left"
        );
    }

    #[test]
    fn a_single_conf_is_converted_and_restored() {
        let d = Dir::new("conf");
        let conf = "{\"cniVersion\":\"0.4.0\",\"name\":\"net\",\"type\":\"bridge\"}\n";
        let p = d.write("10-net.conf", conf, 0o600);
        let to = d.0.join("10-net.conflist");
        assert_eq!(
            install(&d.0, None, &entry()).unwrap(),
            Installed::Converted {
                from: p.clone(),
                to: to.clone()
            }
        );
        assert_eq!(d.names(), ["10-net.conflist"]);
        assert_eq!(
            fs::metadata(&to).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&to).unwrap()).unwrap();
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][1]["type"], PLUGIN_TYPE);
        assert!(installed(&d.0, None, &entry()));
        assert_eq!(
            install(&d.0, None, &entry()).unwrap(),
            Installed::Unchanged(to.clone())
        );
        assert_eq!(uninstall(&d.0).unwrap(), vec![p.clone()]);
        assert_eq!(d.names(), ["10-net.conf"]);
        assert_eq!(fs::read_to_string(&p).unwrap(), conf);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
    }

    #[test]
    fn a_conversion_that_would_lose_first_place_is_refused() {
        let d = Dir::new("shadow");
        let conf = r#"{"cniVersion":"0.4.0","name":"net","type":"bridge"}"#;
        d.write("10-net.conf", conf, 0o644);
        d.write("10-net.conf.d.json", conf, 0o644);
        let e = install(&d.0, None, &entry()).unwrap_err();
        assert!(matches!(e, InstallError::Shadowed { .. }), "{e}");
        assert_eq!(d.names(), ["10-net.conf", "10-net.conf.d.json"]);
        assert_eq!(fs::read_to_string(d.0.join("10-net.conf")).unwrap(), conf);
    }

    #[test]
    fn bad_files_are_named_and_left_alone() {
        let d = Dir::new("bad");
        let e = install(&d.0, None, &entry()).unwrap_err();
        assert!(
            e.to_string().starts_with("no CNI network configuration"),
            "{e}"
        );
        for (name, text, want) in [
            ("10-a.conflist", "{\"plugins\": [", "not a JSON object"),
            (
                "10-a.conflist",
                r#"{"type":"bridge"}"#,
                "no \"plugins\" list",
            ),
            (
                "10-a.conf",
                r#"{"plugins":[{"type":"bridge"}]}"#,
                "no string \"type\"",
            ),
        ] {
            let p = d.write(name, text, 0o644);
            let e = install(&d.0, None, &entry()).unwrap_err().to_string();
            assert!(
                e.starts_with(&p.display().to_string()) && e.contains(want),
                "{e}"
            );
            assert_eq!(fs::read_to_string(&p).unwrap(), text);
            assert_eq!(d.names(), [name]);
            fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn the_binary_is_copied_executable_once_and_removed() {
        let d = Dir::new("bin");
        let src = d.write("src-plugin", "#!/bin/sh\n", 0o644);
        let bin = d.0.join("bin");
        fs::create_dir(&bin).unwrap();
        assert!(!binary_present(&src, &bin));
        assert!(install_binary(&src, &bin).unwrap());
        let dest = bin.join(PLUGIN_TYPE);
        assert_eq!(fs::read(&dest).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert!(binary_present(&src, &bin));
        assert!(!install_binary(&src, &bin).unwrap());
        assert!(remove_binary(&bin).unwrap());
        assert!(!remove_binary(&bin).unwrap());
        assert_eq!(fs::read_dir(&bin).unwrap().count(), 0);
    }
}
