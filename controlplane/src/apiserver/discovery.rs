//! Discovery and meta endpoints: `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`,
//! `/version`, and `/openapi/v2` — all generated from [`super::registry`].
//!
//! `/openapi/v2`: kubectl 1.20 downloads it as protobuf
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`) to validate manifests
//! before `create`/`apply`. We serve a gnostic OpenAPIv2 `Document` without `definitions`:
//! kubectl skips client-side validation for kinds it finds no schema for, and falls back
//! to its compiled-in Go types for building strategic merge patches, which matches the
//! merge keys this server applies. The server still validates every object.

use prost::Message;
use serde_json::{json, Value};

use super::registry::{self, RESOURCES, VERBS};

/// The Kubernetes version we answer as: the API of 1.20, which kubectl 1.20 expects.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "20",
        "gitVersion": "v1.20.2-raftkv",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`: every named group.
pub fn groups() -> Value {
    let groups: Vec<Value> = registry::GROUPS
        .iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: one group.
pub fn group(name: &str) -> Option<Value> {
    registry::GROUPS.contains(&name).then(|| {
        let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [gv.clone()], "preferredVersion": gv})
    })
}

/// `/api/v1` or `/apis/<group>/<version>`: the resources and subresources served there.
pub fn resources(group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in registry::in_group_version(group, version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "storageVersionHash": "",
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if r.in_category_all {
            entry["categories"] = json!(["all"]);
        }
        list.push(entry);
        for sub in r.subresources {
            let (kind, verbs, grp, ver): (&str, Vec<&str>, &str, &str) = match *sub {
                "status" => (r.kind, vec!["get", "patch", "update"], "", ""),
                "scale" => ("Scale", vec!["get", "patch", "update"], "autoscaling", "v1"),
                "binding" => ("Binding", vec!["create"], "", ""),
                "log" => ("Pod", vec!["get"], "", ""),
                _ => continue,
            };
            let mut e = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !grp.is_empty() {
                e["group"] = json!(grp);
                e["version"] = json!(ver);
            }
            list.push(e);
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

/// The fields of gnostic's `openapi_v2.Document` we fill (OpenAPIv2.proto field numbers).
#[derive(Clone, PartialEq, Message)]
pub struct OpenApiDocument {
    /// `string swagger = 1;`
    #[prost(string, tag = "1")]
    pub swagger: String,
    /// `Info info = 2;`
    #[prost(message, optional, tag = "2")]
    pub info: Option<OpenApiInfo>,
    /// `Paths paths = 8;` (empty: no operations are described)
    #[prost(message, optional, tag = "8")]
    pub paths: Option<OpenApiPaths>,
}

/// gnostic's `openapi_v2.Info`.
#[derive(Clone, PartialEq, Message)]
pub struct OpenApiInfo {
    /// `string title = 1;`
    #[prost(string, tag = "1")]
    pub title: String,
    /// `string version = 2;`
    #[prost(string, tag = "2")]
    pub version: String,
}

/// gnostic's `openapi_v2.Paths` with no entries.
#[derive(Clone, PartialEq, Message)]
pub struct OpenApiPaths {}

fn openapi_document() -> OpenApiDocument {
    OpenApiDocument {
        swagger: "2.0".into(),
        info: Some(OpenApiInfo {
            title: "Kubernetes".into(),
            version: "v1.20.2-raftkv".into(),
        }),
        paths: Some(OpenApiPaths {}),
    }
}

/// `/openapi/v2` as protobuf.
pub fn openapi_protobuf() -> Vec<u8> {
    openapi_document().encode_to_vec()
}

/// `/openapi/v2` as JSON.
pub fn openapi_json() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.20.2-raftkv"}, "paths": {}, "definitions": {}})
}

/// Every resource is reachable from discovery; used by tests and `/apis` consumers.
pub fn all_group_versions() -> Vec<String> {
    let mut gvs: Vec<String> = RESOURCES.iter().map(|r| r.api_version()).collect();
    gvs.dedup();
    gvs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_subresources() {
        let core = resources("", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for want in [
            "pods",
            "pods/status",
            "pods/binding",
            "pods/log",
            "nodes/status",
            "namespaces",
            "configmaps",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let apps = resources("apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert!(resources("nope", "v1").is_none());
        assert_eq!(
            all_group_versions(),
            vec!["v1", "apps/v1", "coordination.k8s.io/v1"]
        );
    }

    #[test]
    fn openapi_protobuf_layout() {
        // Field 1 (swagger, wire type 2) = "2.0": tag byte 0x0a, length 3.
        let bytes = openapi_protobuf();
        assert_eq!(&bytes[..5], b"\x0a\x032.0");
        assert_eq!(
            OpenApiDocument::decode(bytes.as_slice()).unwrap(),
            openapi_document()
        );
    }
}
