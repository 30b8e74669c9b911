//! The OpenAPI document: served as kept in the repository, internally
//! consistent, and describing exactly the routes the server registers.
//!
//! The routes are read from the sources of the two crates that build the
//! router (this one and `outrider-update-server`): every `.route(path,
//! method(handler)...)` call, the path a string literal or a `&str` constant.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::helpers::Server;

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

fn document() -> Value {
    serde_json::from_str(outrider_server::openapi::DOCUMENT).expect("openapi.json is JSON")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `pub const NAME: &str = "..."` definitions, for paths given by name.
fn string_constants(sources: &[String]) -> HashMap<String, String> {
    let mut consts = HashMap::new();
    for text in sources {
        for line in text.lines() {
            let Some(rest) = line.trim().split_once("const ").map(|(_, r)| r) else {
                continue;
            };
            let Some((name, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            if let Some(value) = value.strip_suffix("\";") {
                consts.insert(name.trim().to_owned(), value.to_owned());
            }
        }
    }
    consts
}

/// The text of the balanced parenthesis group starting at `open`.
fn group(text: &str, open: usize) -> &str {
    let mut depth = 0;
    let mut in_string = false;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'"' if bytes[i - 1] != b'\\' => in_string = !in_string,
            b'(' if !in_string => depth += 1,
            b')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after byte {open}");
}

/// Every (path, method) registered with `.route(...)` in the router crates.
fn registered_routes() -> BTreeSet<(String, String)> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "../update-server/src", "../protocol/src"] {
        rust_files(&manifest.join(dir), &mut files);
    }
    // The dashboard serves HTML pages on a port of its own
    // (src/dashboard.rs); it is not part of the API this document describes.
    let dashboard = manifest.join("src/dashboard");
    files.retain(|f| !f.starts_with(&dashboard) && !f.ends_with("src/dashboard.rs"));
    let sources: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let consts = string_constants(&sources);
    let mut routes = BTreeSet::new();
    for text in &sources {
        // Test modules build their own small routers; they are not the server's.
        let text = text.split("#[cfg(test)]").next().unwrap();
        for (at, _) in text.match_indices(".route(") {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            if text[line_start..at].trim_start().starts_with("//") {
                continue;
            }
            let args = group(text, at + ".route".len());
            let (path_arg, handler) = args.split_once(',').expect("route has a handler");
            let path_arg = path_arg.trim();
            let path = match path_arg.strip_prefix('"') {
                Some(literal) => literal.trim_end_matches('"').to_owned(),
                None => {
                    let name = path_arg.rsplit("::").next().unwrap();
                    consts
                        .get(name)
                        .unwrap_or_else(|| panic!("route path {path_arg} is not a known constant"))
                        .clone()
                }
            };
            let mut found = false;
            for method in METHODS {
                for (i, _) in handler.match_indices(&format!("{method}(")) {
                    let before = handler[..i].chars().last();
                    if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                        routes.insert((path.clone(), method.to_owned()));
                        found = true;
                    }
                }
            }
            assert!(found, "no method found for route {path}: {handler}");
        }
    }
    routes
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: {method} is not a method"
            );
            routes.insert((path.clone(), method.clone()));
        }
    }
    routes
}

#[test]
fn document_describes_exactly_the_registered_routes() {
    let registered = registered_routes();
    assert!(registered.len() > 20, "scanner found only {registered:?}");
    assert!(registered.contains(&("/v1/agent/ws".to_owned(), "get".to_owned())));
    let documented = documented_routes(&document());
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "server/openapi.json is out of date.\n  routes without documentation: {undocumented:?}\n  documented routes that do not exist: {stale:?}"
    );
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn document_is_consistent() {
    let doc = document();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "$ref {r} has no schema");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            let params: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(params, templated, "{method} {path}: path parameters");
            for requirement in op["security"].as_array().expect("security is explicit") {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(
                        schemes.contains_key(scheme),
                        "{method} {path}: unknown scheme {scheme}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn document_is_served_without_a_token() {
    let server = Server::start().await;
    let (status, body) = server.http("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, document());
    server.stop().await;
}

/// Every route the document marks as admin-only refuses a request without
/// the token; with `document_describes_exactly_the_registered_routes` that
/// covers every registered route, so a new route outside the admin layer
/// fails here.
#[tokio::test]
async fn every_admin_route_refuses_a_request_without_the_token() {
    let doc = document();
    let admin_only = serde_json::json!([{ "adminToken": [] }]);
    let server = Server::start().await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["security"] != admin_only {
                assert!(
                    !path.starts_with("/api/v1/") || path == "/api/v1/openapi.json",
                    "{method} {path} is under /api/v1 but not admin-only"
                );
                continue;
            }
            // Plausible values, so a route that forgot the layer would run.
            let concrete = path
                .replace("{fp}", "0123456789abcdef0123")
                .replace("{sha256}", &"ab".repeat(32))
                .replace("{channel}", "stable")
                .replace(['{', '}'], "");
            let method = method.to_uppercase();
            let (status, body) = server.http(&method, &concrete, None, None).await;
            assert_eq!(status, 401, "{method} {concrete}: {body}");
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} admin routes in the document");
    server.stop().await;
}
