//! `cargo xtask render`: an example of `envoy-examples/` made ready to load. The one place that
//! expands the examples' placeholders (the demo, the load run and the end-to-end tests all use
//! it):
//! - in the plugin configuration of every `envoy.filters.http.wasm` filter of an Envoy bootstrap or
//!   of an Istio `EnvoyFilter`'s patches, or in an Istio `WasmPlugin`'s `spec.pluginConfig`,
//!   `"schema": "@<file>"` becomes that file's text and `"policies": "@<glob>"` one named document
//!   per matching file (`{"mcp.cedar": …}`), so that a policy error names its file;
//! - optionally every wasm filter's module path is set, and in a bootstrap the admin port, every
//!   listener's port and the `upstream` cluster's endpoint ports.
//!
//! The output is JSON (which Envoy reads as a bootstrap and `kubectl` as a resource).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// What to set in a bootstrap besides the placeholders.
#[derive(Debug, Default)]
pub(crate) struct Patch {
    pub(crate) admin: Option<u16>,
    pub(crate) listener: Option<u16>,
    pub(crate) upstream: Option<u16>,
    pub(crate) wasm: Option<PathBuf>,
}

/// `cargo xtask render <example> [--output F] [--admin-port N] [--listener-port N]
/// [--upstream-port N] [--wasm PATH]`.
pub(crate) fn command(root: &Path, args: &[String]) -> Result<()> {
    let mut example = None;
    let mut output = None;
    let mut patch = Patch::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--output" | "-o" => output = Some(PathBuf::from(value()?)),
            "--admin-port" => patch.admin = Some(value()?.parse()?),
            "--listener-port" => patch.listener = Some(value()?.parse()?),
            "--upstream-port" => patch.upstream = Some(value()?.parse()?),
            "--wasm" => patch.wasm = Some(PathBuf::from(value()?)),
            _ if example.is_none() && !a.starts_with('-') => example = Some(PathBuf::from(a)),
            _ => bail!("render: unexpected argument {a:?}"),
        }
    }
    let example = example.context(
        "usage: cargo xtask render <example.yaml> [--output F] [--admin-port N] \
         [--listener-port N] [--upstream-port N] [--wasm PATH]",
    )?;
    let text = to_string(&render(root, &example, &patch)?)?;
    match output {
        Some(out) => write(&out, &text),
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

/// Renders `example` (a path relative to `root` or absolute) into `out`.
pub(crate) fn render_to(root: &Path, example: &str, out: &Path, patch: &Patch) -> Result<()> {
    write(out, &to_string(&render(root, Path::new(example), patch)?)?)
}

fn to_string(doc: &Value) -> Result<String> {
    Ok(serde_json::to_string_pretty(doc)?)
}

fn write(out: &Path, text: &str) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

/// The example, expanded and patched.
pub(crate) fn render(root: &Path, example: &Path, patch: &Patch) -> Result<Value> {
    let path = root.join(example);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not YAML", path.display()))?;
    let what = example.display().to_string();
    // A Kubernetes resource: an Istio WasmPlugin (its pluginConfig is an object) or an Istio
    // EnvoyFilter (its patches carry whole wasm filters, expanded below as a bootstrap's are).
    let resource = doc.get("apiVersion").is_some();
    if resource {
        if let Some(cfg) = doc.pointer_mut("/spec/pluginConfig") {
            expand(root, cfg).with_context(|| format!("{what}: spec.pluginConfig"))?;
            return Ok(doc);
        }
        if patch.admin.is_some() || patch.listener.is_some() || patch.upstream.is_some() {
            bail!("{what}: ports are set in an Envoy bootstrap, not in a Kubernetes resource");
        }
    }
    let mut filters = 0;
    for config in wasm_configs(&mut doc) {
        filters += 1;
        let value = config
            .pointer("/configuration/value")
            .and_then(Value::as_str)
            .with_context(|| format!("{what}: a wasm filter without configuration.value"))?;
        let mut cfg: Value = serde_json::from_str(value)
            .with_context(|| format!("{what}: the plugin configuration is not JSON"))?;
        expand(root, &mut cfg)?;
        config["configuration"]["value"] = json!(serde_json::to_string(&cfg)?);
        if let Some(wasm) = &patch.wasm {
            config["vm_config"]["code"]["local"]["filename"] = json!(wasm.display().to_string());
        }
    }
    if resource && filters == 0 {
        bail!("{what}: neither a spec.pluginConfig nor a wasm filter");
    }
    if patch.wasm.is_some() && filters == 0 {
        bail!("{what}: --wasm given, but it has no wasm filter");
    }
    apply(&mut doc, patch).with_context(|| what.clone())?;
    Ok(doc)
}

/// The `config` of every `envoy.filters.http.wasm` filter, in document order.
fn wasm_configs(doc: &mut Value) -> Vec<&mut Value> {
    fn walk<'a>(v: &'a mut Value, out: &mut Vec<&'a mut Value>) {
        match v {
            Value::Object(m) => {
                if m.get("@type").and_then(Value::as_str) == Some(WASM_FILTER)
                    && m.contains_key("config")
                {
                    if let Some(c) = m.get_mut("config") {
                        out.push(c);
                    }
                    return;
                }
                for x in m.values_mut() {
                    walk(x, out);
                }
            }
            Value::Array(a) => {
                for x in a {
                    walk(x, out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    walk(doc, &mut out);
    out
}

/// `schema` and `policies` placeholders of one plugin configuration.
fn expand(root: &Path, cfg: &mut Value) -> Result<()> {
    if let Some(r) = placeholder(cfg, "schema") {
        let files = matching(root, &r)?;
        let [file] = files.as_slice() else {
            bail!("`schema` is one file; {r:?} matches {}", files.len());
        };
        cfg["schema"] = json!(std::fs::read_to_string(file)?);
    }
    if let Some(r) = placeholder(cfg, "policies") {
        let mut docs = Map::new();
        for file in matching(root, &r)? {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .context("a policy file name that is not UTF-8")?
                .to_string();
            let text = std::fs::read_to_string(&file)?;
            if docs.insert(name.clone(), json!(text)).is_some() {
                bail!("{r:?}: two files are named {name}");
            }
        }
        cfg["policies"] = Value::Object(docs);
    }
    Ok(())
}

/// `"@<pattern>"` of `member`, without the `@`.
fn placeholder(cfg: &Value, member: &str) -> Option<String> {
    cfg.get(member)?
        .as_str()?
        .strip_prefix('@')
        .map(str::to_string)
}

/// The files `pattern` names under `root`, sorted by name: a path whose last part may hold one
/// `*` (as `policies/*.cedar`).
fn matching(root: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    if dir.contains('*') {
        bail!("placeholder @{pattern}: only the file name may hold `*`");
    }
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    let exact = !name.contains('*');
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .with_context(|| format!("placeholder @{pattern}: no directory {dir}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                if exact {
                    n == name
                } else {
                    n.len() >= prefix.len() + suffix.len()
                        && n.starts_with(prefix)
                        && n.ends_with(suffix)
                }
            })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("placeholder @{pattern}: no file matches");
    }
    Ok(files)
}

/// Ports of a bootstrap.
fn apply(doc: &mut Value, patch: &Patch) -> Result<()> {
    if let Some(port) = patch.admin {
        *doc.pointer_mut("/admin/address/socket_address/port_value")
            .context("no admin.address.socket_address")? = json!(port);
    }
    if let Some(port) = patch.listener {
        let listeners = doc
            .pointer_mut("/static_resources/listeners")
            .and_then(Value::as_array_mut)
            .context("no static_resources.listeners")?;
        for l in listeners {
            l["address"]["socket_address"]["port_value"] = json!(port);
        }
    }
    if let Some(port) = patch.upstream {
        let clusters = doc
            .pointer_mut("/static_resources/clusters")
            .and_then(Value::as_array_mut)
            .context("no static_resources.clusters")?;
        let mut found = false;
        for c in clusters.iter_mut().filter(|c| c["name"] == "upstream") {
            found = true;
            let endpoints = c
                .pointer_mut("/load_assignment/endpoints")
                .and_then(Value::as_array_mut)
                .context("cluster upstream: no load_assignment.endpoints")?;
            for ep in endpoints {
                for lb in ep["lb_endpoints"].as_array_mut().into_iter().flatten() {
                    lb["endpoint"]["address"]["socket_address"]["port_value"] = json!(port);
                }
            }
        }
        if !found {
            bail!("no cluster named upstream");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn plugin_config(doc: &Value) -> Value {
        let mut doc = doc.clone();
        let configs = wasm_configs(&mut doc);
        let value = configs[0]["configuration"]["value"].as_str().unwrap_or("");
        serde_json::from_str(value).unwrap_or(Value::Null)
    }

    #[test]
    fn policies_become_one_named_document_per_file() -> Result<()> {
        let doc = render(
            &root(),
            Path::new("envoy-examples/envoy-http.yaml"),
            &Patch::default(),
        )?;
        let cfg = plugin_config(&doc);
        let names: Vec<&String> = cfg["policies"]
            .as_object()
            .context("named")?
            .keys()
            .collect();
        let mut files: Vec<String> = std::fs::read_dir(root().join("policies"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cedar"))
            .collect();
        files.sort();
        assert_eq!(names, files.iter().collect::<Vec<_>>());
        assert_eq!(
            cfg["schema"].as_str(),
            Some(std::fs::read_to_string(root().join("policies/tessera.cedarschema"))?.as_str())
        );
        Ok(())
    }

    #[test]
    fn ports_and_the_module_are_patched() -> Result<()> {
        let patch = Patch {
            admin: Some(1),
            listener: Some(2),
            upstream: Some(3),
            wasm: Some(PathBuf::from("/m.wasm")),
        };
        let mut doc = render(&root(), Path::new("envoy-examples/envoy-http.yaml"), &patch)?;
        assert_eq!(doc["admin"]["address"]["socket_address"]["port_value"], 1);
        let l = &doc["static_resources"]["listeners"][0];
        assert_eq!(l["address"]["socket_address"]["port_value"], 2);
        let c = doc["static_resources"]["clusters"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "upstream"))
            .context("upstream")?;
        let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
        assert_eq!(ep["endpoint"]["address"]["socket_address"]["port_value"], 3);
        let configs = wasm_configs(&mut doc);
        assert_eq!(
            configs[0]["vm_config"]["code"]["local"]["filename"],
            "/m.wasm"
        );
        Ok(())
    }

    #[test]
    fn the_istio_plugin_config_is_expanded_in_place() -> Result<()> {
        let doc = render(
            &root(),
            Path::new("envoy-examples/istio-wasmplugin.yaml"),
            &Patch::default(),
        )?;
        assert!(doc["spec"]["pluginConfig"]["policies"]["mcp.cedar"].is_string());
        assert_eq!(doc["kind"], "WasmPlugin");
        Ok(())
    }

    #[test]
    fn the_istio_envoy_filter_is_expanded_like_a_bootstrap() -> Result<()> {
        let example = Path::new("envoy-examples/istio-envoyfilter-mcp.yaml");
        let patch = Patch {
            wasm: Some(PathBuf::from("/m.wasm")),
            ..Patch::default()
        };
        let mut doc = render(&root(), example, &patch)?;
        assert_eq!(doc["kind"], "EnvoyFilter");
        let bootstrap = render(
            &root(),
            Path::new("envoy-examples/envoy-mcp.yaml"),
            &Patch::default(),
        )?;
        let cfg = plugin_config(&doc);
        assert!(cfg["policies"]["mcp.cedar"].is_string());
        assert_eq!(cfg, plugin_config(&bootstrap));
        let configs = wasm_configs(&mut doc);
        assert_eq!(
            configs[0]["vm_config"]["code"]["local"]["filename"],
            "/m.wasm"
        );
        let ports = Patch {
            listener: Some(1),
            ..Patch::default()
        };
        assert!(render(&root(), example, &ports).is_err());
        Ok(())
    }

    #[test]
    fn a_placeholder_that_matches_nothing_is_an_error() {
        let mut cfg = json!({"policies": "@policies/*.nope"});
        let e = expand(&root(), &mut cfg).map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err("placeholder @policies/*.nope: no file matches".into())
        );
    }
}
