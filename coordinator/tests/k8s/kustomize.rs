//! A small `kustomize build`: the part of kustomize that `k8s/` uses, so that the overlays'
//! output can be validated by `cargo test` alone (no kustomize binary on a fresh machine).
//! CI cross-checks it against the real one (`kubectl kustomize`, see `k8s_manifests.rs`).
//!
//! A kustomization is built as kustomize does for these fields:
//! - `resources`: files (YAML streams) and directories holding a kustomization.yaml, built
//!   first, in order;
//! - `patches` with a `target` (kind and/or name) and an inline JSON 6902 `patch` (`add`,
//!   `replace`, `remove`; a path ending in `/-` appends to a list);
//! - `labels` with `pairs` (no `includeSelectors`/`includeTemplates`): added to each object's
//!   `metadata.labels` only;
//! - `images` (`name`, `newName`, `newTag`): the image of every container and init container of
//!   a pod template whose name (without tag) is `name`.
//!
//! Any other field is an error naming it, so the tree cannot silently use a feature this build
//! does not reproduce.

use std::path::Path;

use serde_json::Value;

const KNOWN: &[&str] = &[
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "labels",
    "images",
];

pub fn build(dir: &Path) -> Result<Vec<Value>, String> {
    let file = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let k: Value = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let at = |what: &str| format!("{}: {what}", file.display());
    for key in k.as_object().ok_or_else(|| at("not a mapping"))?.keys() {
        if !KNOWN.contains(&key.as_str()) {
            return Err(at(&format!("`{key}` is not supported by this build")));
        }
    }
    let mut objects = Vec::new();
    for r in list(&k, "resources") {
        let r = r.as_str().ok_or_else(|| at("a resource is not a string"))?;
        let path = dir.join(r);
        if path.is_dir() {
            objects.extend(build(&path)?);
        } else {
            objects.extend(read_stream(&path)?);
        }
    }
    for p in list(&k, "patches") {
        let target = &p["target"];
        let ops: Value = serde_norway::from_str(
            p["patch"]
                .as_str()
                .ok_or_else(|| at("a patch without an inline `patch`"))?,
        )
        .map_err(|e| at(&format!("patch: {e}")))?;
        let mut hit = false;
        for o in objects.iter_mut().filter(|o| matches(o, target)) {
            hit = true;
            for op in ops
                .as_array()
                .ok_or_else(|| at("a patch is not a list of operations"))?
            {
                apply(o, op).map_err(|e| at(&e))?;
            }
        }
        if !hit {
            return Err(at(&format!("patch target {target} matches nothing")));
        }
    }
    for l in list(&k, "labels") {
        if l.get("includeSelectors").is_some() || l.get("includeTemplates").is_some() {
            return Err(at(
                "labels: includeSelectors/includeTemplates are not supported",
            ));
        }
        for o in objects.iter_mut() {
            for (key, value) in l["pairs"].as_object().into_iter().flatten() {
                o["metadata"]["labels"][key] = value.clone();
            }
        }
    }
    for image in list(&k, "images") {
        let name = image["name"]
            .as_str()
            .ok_or_else(|| at("an image without a name"))?;
        for o in objects.iter_mut() {
            // `pointer_mut`, not indexing: indexing a missing key would insert it.
            let Some(spec) = o.pointer_mut("/spec/template/spec") else {
                continue;
            };
            for field in ["containers", "initContainers"] {
                for c in spec
                    .get_mut(field)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let current = c["image"].as_str().unwrap_or_default().to_string();
                    let (base, tag) = match current.rsplit_once(':') {
                        Some((b, t)) if !t.contains('/') => (b.to_string(), Some(t.to_string())),
                        _ => (current.clone(), None),
                    };
                    if base != name {
                        continue;
                    }
                    let new_name = image["newName"].as_str().unwrap_or(&base);
                    let new_tag = image["newTag"].as_str().map(str::to_string).or(tag);
                    c["image"] = Value::String(match new_tag {
                        Some(t) => format!("{new_name}:{t}"),
                        None => new_name.to_string(),
                    });
                }
            }
        }
    }
    Ok(objects)
}

fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// The documents of a YAML stream (empty ones skipped).
pub fn read_stream(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_stream(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse_stream(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn matches(o: &Value, target: &Value) -> bool {
    ["kind", "name"].iter().all(|f| match target.get(*f) {
        None => true,
        Some(want) => {
            let got = if *f == "kind" {
                &o["kind"]
            } else {
                &o["metadata"]["name"]
            };
            got == want
        }
    })
}

/// One JSON 6902 operation.
fn apply(o: &mut Value, op: &Value) -> Result<(), String> {
    let path = op["path"].as_str().ok_or("an operation without a path")?;
    let (parent, last) = path.rsplit_once('/').ok_or(format!("bad path {path}"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let parent = o
        .pointer_mut(parent)
        .ok_or(format!("{path}: the parent does not exist"))?;
    match (op["op"].as_str(), parent) {
        (Some("add"), Value::Array(items)) if last == "-" => items.push(op["value"].clone()),
        (Some("add"), Value::Array(items)) => {
            let i: usize = last.parse().map_err(|_| format!("{path}: not an index"))?;
            if i > items.len() {
                return Err(format!("{path}: index out of range"));
            }
            items.insert(i, op["value"].clone());
        }
        (Some("add"), Value::Object(m)) => {
            m.insert(last, op["value"].clone());
        }
        (Some("replace"), p) => {
            let slot = p
                .pointer_mut(&format!("/{last}"))
                .ok_or(format!("{path}: nothing to replace"))?;
            *slot = op["value"].clone();
        }
        (Some("remove"), Value::Object(m)) => {
            m.remove(&last)
                .ok_or(format!("{path}: nothing to remove"))?;
        }
        (Some("remove"), Value::Array(items)) => {
            let i: usize = last.parse().map_err(|_| format!("{path}: not an index"))?;
            if i >= items.len() {
                return Err(format!("{path}: nothing to remove"));
            }
            items.remove(i);
        }
        (what, _) => return Err(format!("{path}: operation {what:?} is not supported")),
    }
    Ok(())
}
