//! meshsteer-cni's entry in a CNI network configuration, edited as text: the entry is spliced
//! into (and out of) the `plugins` list and every other byte is left as it was. So removing it
//! gives back the file exactly as the primary plugin wrote it, and a file that already has the
//! entry is not rewritten (other node agents watch this directory too). serde_json's
//! `RawValue` gives the spans; nothing here touches the file system.
use std::{collections::HashMap, ops::Range};

use serde_json::{Value, value::RawValue};

/// The plugin's `type`, which is also its binary's name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "meshsteer-cni";

/// The key marking a conflist made from a single-plugin file: that file's name, so that
/// uninstalling puts it back.
pub const CONVERTED_FROM: &str = "meshsteerConvertedFrom";

/// Why a configuration cannot take the entry (the caller names the file).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfError {
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("no \"plugins\" list (a .conflist needs one; a single plugin belongs in a .conf)")]
    NoPlugins,
    #[error("\"plugins\" is not a list: {0}")]
    PluginsNotList(String),
    #[error(
        "\"plugins\" is empty: meshsteer-cni must be chained after the plugin that gives pods \
         their network"
    )]
    EmptyPlugins,
    #[error("plugins[{0}] is not an object with a string \"type\"")]
    BadPlugin(usize),
    #[error(
        "no string \"type\": a single network configuration needs one (a list of plugins belongs in a .conflist)"
    )]
    NoType,
    #[error("no string \"{0}\", which a .conflist made from it needs")]
    Missing(&'static str),
}

/// meshsteer-cni's entry: what `agentSocket` it is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub agent_socket: String,
}

impl Entry {
    /// The entry as it is written, `type` first for whoever reads the file.
    pub fn text(&self) -> String {
        format!(
            r#"{{"type":"{PLUGIN_TYPE}","agentSocket":{}}}"#,
            Value::String(self.agent_socket.clone())
        )
    }

    fn value(&self) -> Value {
        serde_json::json!({"type": PLUGIN_TYPE, "agentSocket": self.agent_socket})
    }
}

/// A conflist's `plugins`: where the list and each element are in the text.
struct List {
    /// `[` to `]`.
    array: Range<usize>,
    plugins: Vec<Plugin>,
}

struct Plugin {
    span: Range<usize>,
    value: Value,
}

impl Plugin {
    fn ours(&self) -> bool {
        self.value["type"] == PLUGIN_TYPE
    }
}

/// Where `part`, a slice of `text` (as `RawValue` borrows it), is in `text`.
fn span(text: &str, part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    debug_assert!(text.get(start..start + part.len()) == Some(part));
    start..start + part.len()
}

fn top(text: &str) -> Result<HashMap<String, &RawValue>, ConfError> {
    serde_json::from_str(text).map_err(|e| ConfError::Json(e.to_string()))
}

fn parse_list(text: &str) -> Result<List, ConfError> {
    let top = top(text)?;
    let raw = top.get("plugins").ok_or(ConfError::NoPlugins)?;
    let array = span(text, raw.get());
    let items: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|e| ConfError::PluginsNotList(e.to_string()))?;
    let mut plugins = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let value: Value = serde_json::from_str(item.get()).map_err(|_| ConfError::BadPlugin(i))?;
        if !value["type"].is_string() {
            return Err(ConfError::BadPlugin(i));
        }
        plugins.push(Plugin {
            span: span(text, item.get()),
            value,
        });
    }
    Ok(List { array, plugins })
}

/// Checks that `text` is a conflist with plugins (a primary one to chain after).
pub fn check(text: &str) -> Result<(), ConfError> {
    parse_list(text).and_then(|l| {
        if l.plugins.is_empty() {
            Err(ConfError::EmptyPlugins)
        } else {
            Ok(())
        }
    })
}

/// `text` with `entry` as the last plugin, exactly once; `None` when it already is.
pub fn install(text: &str, entry: &Entry) -> Result<Option<String>, ConfError> {
    let list = parse_list(text)?;
    let ours = list.plugins.iter().filter(|p| p.ours()).count();
    if ours == 1
        && let Some(last) = list.plugins.last()
        && last.ours()
        && last.value == entry.value()
    {
        return Ok(None);
    }
    // Wherever and however often it is there, it goes, and comes back last as configured.
    let mut out = remove(text)?.unwrap_or_else(|| text.to_string());
    let list = parse_list(&out)?;
    let Some(last) = list.plugins.last() else {
        return Err(ConfError::EmptyPlugins);
    };
    // The new element is indented as the last one is (the text between it and the `,` or `[`
    // before it), so a pretty file stays pretty and a compact one compact.
    let before = match list.plugins.len() {
        1 => list.array.start,
        n => list.plugins[n - 2].span.end,
    };
    let gap = &out[before..last.span.start];
    let indent = gap.rsplit([',', '[']).next().unwrap_or("").to_string();
    out.insert_str(last.span.end, &format!(",{indent}{}", entry.text()));
    Ok(Some(out))
}

/// `text` without meshsteer-cni's entries; `None` when it has none. Each goes with the `,` and
/// blank that [`install`] put before it, so the rest is byte for byte as it was.
pub fn remove(text: &str) -> Result<Option<String>, ConfError> {
    let mut out = text.to_string();
    let mut changed = false;
    loop {
        let list = parse_list(&out)?;
        let Some(i) = list.plugins.iter().rposition(Plugin::ours) else {
            break;
        };
        let p = &list.plugins;
        let cut = if i > 0 {
            p[i - 1].span.end..p[i].span.end
        } else if p.len() > 1 {
            p[0].span.start..p[1].span.start
        } else {
            p[0].span.clone()
        };
        out.replace_range(cut, "");
        changed = true;
    }
    Ok(changed.then_some(out))
}

/// A single-plugin configuration (a `.conf` file named `name`) as a conflist whose one plugin
/// is that file's text, verbatim, with the list's `cniVersion` and `name` taken from it and
/// [`CONVERTED_FROM`] naming the file. istio-cni does the same (its `plugins` holds the
/// configuration, and the file is renamed to `.conflist`), but re-encodes it; keeping the text
/// lets uninstalling give back the very bytes ([`converted`]). The runtime overwrites a
/// plugin's own `cniVersion` and `name` with the list's, which are the same.
pub fn convert(text: &str, name: &str) -> Result<String, ConfError> {
    let top = top(text)?;
    let string = |key: &'static str| {
        top.get(key)
            .filter(|v| v.get().starts_with('"'))
            .map(|v| v.get())
            .ok_or(ConfError::Missing(key))
    };
    if !top.get("type").is_some_and(|v| v.get().starts_with('"')) {
        return Err(ConfError::NoType);
    }
    Ok(format!(
        "{{\n  \"cniVersion\": {},\n  \"name\": {},\n  \"{CONVERTED_FROM}\": {},\n  \"plugins\": [{text}]\n}}\n",
        string("cniVersion")?,
        string("name")?,
        Value::String(name.to_string()),
    ))
}

/// For a conflist that [`convert`] made and that holds nothing else (meshsteer-cni's entry
/// removed): the name and the exact text of the file it was made from.
pub fn converted(text: &str) -> Result<Option<(String, String)>, ConfError> {
    let top = top(text)?;
    let Some(Ok(name)) = top
        .get(CONVERTED_FROM)
        .map(|v| serde_json::from_str::<String>(v.get()))
    else {
        return Ok(None);
    };
    let list = parse_list(text)?;
    if list.plugins.len() != 1 || list.plugins[0].ours() {
        return Ok(None);
    }
    let inner = &text[list.array.start + 1..list.array.end - 1];
    Ok(Some((name, inner.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "pods",
  "plugins": [
    {
      "type": "bridge",
      "ipam": { "type": "host-local", "subnet": "10.244.1.0/24" }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
"#;

    fn entry(socket: &str) -> Entry {
        Entry {
            agent_socket: socket.into(),
        }
    }

    fn plugins(text: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(text).unwrap();
        v["plugins"].as_array().unwrap().clone()
    }

    #[test]
    fn inserted_last_indented_and_removed_to_the_byte() {
        let e = entry("/run/meshsteer/cni.sock");
        let with = install(BRIDGE, &e).unwrap().unwrap();
        let p = plugins(&with);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], e.value());
        assert!(
            with.contains(
                "}\n    },\n    { \"type\": \"portmap\", \"capabilities\": { \"portMappings\": true } },\n    {\"type\":\"meshsteer-cni\",\"agentSocket\":\"/run/meshsteer/cni.sock\"}\n  ]"
            ),
            "{with}"
        );
        assert_eq!(remove(&with).unwrap().unwrap(), BRIDGE);
        assert_eq!(remove(BRIDGE).unwrap(), None);
    }

    #[test]
    fn compact_lists_stay_compact() {
        let compact = r#"{"cniVersion":"0.3.1","name":"k","plugins":[{"type":"ptp"}]}"#;
        let with = install(compact, &entry("/s")).unwrap().unwrap();
        assert_eq!(
            with,
            r#"{"cniVersion":"0.3.1","name":"k","plugins":[{"type":"ptp"},{"type":"meshsteer-cni","agentSocket":"/s"}]}"#
        );
        assert_eq!(remove(&with).unwrap().unwrap(), compact);
    }

    #[test]
    fn idempotent_and_updated_when_its_settings_differ() {
        let with = install(BRIDGE, &entry("/a.sock")).unwrap().unwrap();
        assert_eq!(install(&with, &entry("/a.sock")).unwrap(), None);
        let moved = install(&with, &entry("/b.sock")).unwrap().unwrap();
        let p = plugins(&moved);
        assert_eq!(p.len(), 3, "{moved}");
        assert_eq!(p[2]["agentSocket"], "/b.sock");
        assert_eq!(remove(&moved).unwrap().unwrap(), BRIDGE);
    }

    #[test]
    fn an_entry_twice_or_not_last_is_made_one_and_last() {
        let e = entry("/s");
        let twice = r#"{"plugins":[{"type":"meshsteer-cni","agentSocket":"/s"},{"type":"bridge"},{"type":"meshsteer-cni","agentSocket":"/s"}]}"#;
        let fixed = install(twice, &e).unwrap().unwrap();
        assert_eq!(
            fixed,
            r#"{"plugins":[{"type":"bridge"},{"type":"meshsteer-cni","agentSocket":"/s"}]}"#
        );
    }

    #[test]
    fn bad_input_is_named() {
        let e = entry("/s");
        assert!(matches!(install("{", &e), Err(ConfError::Json(_))));
        assert!(matches!(install("[1]", &e), Err(ConfError::Json(_))));
        assert_eq!(
            install(r#"{"type":"bridge"}"#, &e),
            Err(ConfError::NoPlugins)
        );
        assert_eq!(
            install(r#"{"plugins":[]}"#, &e),
            Err(ConfError::EmptyPlugins)
        );
        assert!(matches!(
            install(r#"{"plugins":{}}"#, &e),
            Err(ConfError::PluginsNotList(_))
        ));
        assert_eq!(
            install(r#"{"plugins":[{"type":"a"},{"ipam":{}}]}"#, &e),
            Err(ConfError::BadPlugin(1))
        );
        assert!(check(BRIDGE).is_ok());
        assert_eq!(check(r#"{"plugins":[]}"#), Err(ConfError::EmptyPlugins));
    }

    #[test]
    fn a_single_conf_becomes_a_list_and_comes_back_verbatim() {
        let conf =
            "{\n  \"cniVersion\": \"0.4.0\",\n  \"name\": \"net\",\n  \"type\": \"bridge\"\n}\n";
        let list = convert(conf, "10-net.conf").unwrap();
        let v: Value = serde_json::from_str(&list).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["name"], "net");
        assert_eq!(v["plugins"][0]["type"], "bridge");
        let with = install(&list, &entry("/s")).unwrap().unwrap();
        assert_eq!(plugins(&with)[1]["type"], PLUGIN_TYPE);
        assert_eq!(converted(&with).unwrap(), None, "our entry is still there");
        let without = remove(&with).unwrap().unwrap();
        assert_eq!(
            converted(&without).unwrap(),
            Some(("10-net.conf".to_string(), conf.to_string()))
        );
        assert_eq!(converted(BRIDGE).unwrap(), None);
        assert_eq!(
            convert(r#"{"name":"n","cniVersion":"1.0.0"}"#, "x.conf"),
            Err(ConfError::NoType)
        );
        assert_eq!(
            convert(r#"{"type":"bridge","cniVersion":"1.0.0"}"#, "x.conf"),
            Err(ConfError::Missing("name"))
        );
    }
}
