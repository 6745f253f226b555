//! Kubernetes `Status` errors: every failure the API server reports, with the HTTP code,
//! `reason`, `details` and message text kube-apiserver 1.20 uses, so kubectl prints the same
//! lines it prints against Kubernetes (`Error from server (NotFound): pods "x" not found`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::registry::Resource;

/// One field-level problem of an `Invalid` (422) error, as `details.causes[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
    /// `metadata.name`, `spec.containers[0].image`, ...
    pub field: String,
    /// The text after the field path, e.g. `Required value`.
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>, detail: &str) -> Cause {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    /// `Invalid value: "X": detail`, with the value printed as Go's `%#v` would for a string.
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", go_quote(value)),
        }
    }

    /// `Invalid value: <raw>: detail` for values that are not strings (numbers, maps).
    pub fn invalid_raw(field: impl Into<String>, raw: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {raw}: {detail}"),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &str) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", go_quote(value)),
        }
    }
}

/// Quotes a string as Go's `%q` does for the plain ASCII values that appear in names.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// Every error the API server answers with. Displayed text is the Status `message`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ApiError {
    #[error("{} \"{name}\" not found", .resource)]
    NotFound {
        resource: String,
        group: String,
        name: String,
    },
    #[error("the server could not find the requested resource")]
    PathNotFound,
    #[error("{} \"{name}\" already exists", .resource)]
    AlreadyExists {
        resource: String,
        group: String,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", .resource)]
    Conflict {
        resource: String,
        group: String,
        name: String,
    },
    /// A conflict with a more specific message (binding, preconditions).
    #[error("{message}")]
    ConflictWith {
        resource: String,
        group: String,
        name: String,
        message: String,
    },
    #[error("{}", invalid_message(&qualified(.kind, .group), .name, .causes))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    /// A well-formed request that cannot apply (a patch whose operations fail).
    #[error("{0}")]
    Unprocessable(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(Box<ForbiddenDetail>),
    /// A create in a namespace being deleted (kube's NamespaceLifecycle admission).
    #[error("{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated", qualified(.resource, .group))]
    NamespaceTerminating {
        resource: String,
        group: String,
        name: String,
        namespace: String,
    },
    #[error("{0}")]
    Gone(String),
    #[error("Request entity too large: limit is {0}")]
    TooLarge(usize),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Who was refused what, for kube's `Forbidden` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForbiddenDetail {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub group: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl std::fmt::Display for ForbiddenDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let qualified = qualified(&self.resource, &self.group);
        match &self.name {
            Some(n) => write!(f, "{qualified} \"{n}\" is forbidden: ")?,
            None => write!(f, "{qualified} is forbidden: ")?,
        }
        write!(
            f,
            "User \"{}\" cannot {} resource \"{}\" in API group \"{}\"",
            self.user, self.verb, self.resource, self.group
        )?;
        match &self.namespace {
            Some(ns) => write!(f, " in the namespace \"{ns}\""),
            None => write!(f, " at the cluster scope"),
        }
    }
}

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn invalid_message(kind: &str, name: &str, causes: &[Cause]) -> String {
    let one = |c: &Cause| format!("{}: {}", c.field, c.message);
    let list = match causes {
        [c] => one(c),
        many => format!("[{}]", many.iter().map(one).collect::<Vec<_>>().join(", ")),
    };
    format!("{kind} \"{name}\" is invalid: {list}")
}

impl ApiError {
    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        ApiError::NotFound {
            resource: r.qualified(),
            group: r.group.to_string(),
            name: name.to_string(),
        }
    }

    pub fn already_exists(r: &Resource, name: &str) -> ApiError {
        ApiError::AlreadyExists {
            resource: r.qualified(),
            group: r.group.to_string(),
            name: name.to_string(),
        }
    }

    pub fn conflict(r: &Resource, name: &str) -> ApiError {
        ApiError::Conflict {
            resource: r.qualified(),
            group: r.group.to_string(),
            name: name.to_string(),
        }
    }

    pub fn invalid(r: &Resource, name: &str, causes: Vec<Cause>) -> ApiError {
        ApiError::Invalid {
            kind: r.kind.to_string(),
            group: r.group.to_string(),
            name: name.to_string(),
            causes,
        }
    }

    /// The same conflict with kube's more specific text.
    pub fn with_message(self, message: String) -> ApiError {
        match self {
            ApiError::Conflict {
                resource,
                group,
                name,
            } => ApiError::ConflictWith {
                resource,
                group,
                name,
                message,
            },
            other => other,
        }
    }

    /// `too old resource version: <asked> (<oldest available>)`, kube's watch-cache text.
    pub fn too_old(asked: i64, oldest: i64) -> ApiError {
        ApiError::Gone(format!("too old resource version: {asked} ({oldest})"))
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::PathNotFound => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ConflictWith { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::NamespaceTerminating { .. } => StatusCode::FORBIDDEN,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::PathNotFound => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ConflictWith { .. } => "Conflict",
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) | ApiError::NamespaceTerminating { .. } => "Forbidden",
            ApiError::Gone(_) => "Expired",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
        }
    }

    fn details(&self) -> Option<Value> {
        let named = |resource: &str, group: &str, name: &str| {
            let mut d = json!({ "name": name, "kind": resource_only(resource) });
            if !group.is_empty() {
                d["group"] = json!(group);
            }
            d
        };
        match self {
            ApiError::NotFound {
                resource,
                group,
                name,
            }
            | ApiError::AlreadyExists {
                resource,
                group,
                name,
            }
            | ApiError::Conflict {
                resource,
                group,
                name,
            }
            | ApiError::ConflictWith {
                resource,
                group,
                name,
                ..
            } => Some(named(resource, group, name)),
            ApiError::Invalid {
                kind,
                group,
                name,
                causes,
            } => {
                let mut d = named(kind, group, name);
                d["causes"] = causes
                    .iter()
                    .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
                    .collect();
                Some(d)
            }
            ApiError::Forbidden(f) => {
                let mut d = json!({ "kind": f.resource });
                if let Some(n) = &f.name {
                    d["name"] = json!(n);
                }
                if !f.group.is_empty() {
                    d["group"] = json!(f.group);
                }
                Some(d)
            }
            ApiError::NamespaceTerminating {
                resource,
                group,
                name,
                namespace,
            } => {
                let mut d = named(resource, group, name);
                d["causes"] = json!([{
                    "reason": "NamespaceTerminating",
                    "message": format!("namespace {namespace} is being terminated"),
                    "field": "metadata.namespace",
                }]);
                Some(d)
            }
            ApiError::MethodNotAllowed | ApiError::PathNotFound => Some(json!({})),
            _ => None,
        }
    }

    /// The `Status` object kube-apiserver sends for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        if let Some(d) = self.details() {
            s["details"] = d;
        }
        s
    }
}

/// `deployments.apps` → `deployments`: details.kind carries the bare resource.
fn resource_only(qualified: &str) -> &str {
    qualified.split('.').next().unwrap_or(qualified)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (
            self.code(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry;

    #[test]
    fn messages_match_kube_apiserver() {
        let pods = registry::lookup("", "v1", "pods").unwrap();
        let deploy = registry::lookup("apps", "v1", "deployments").unwrap();
        let cases: Vec<(ApiError, u16, &str, &str)> = vec![
            (
                ApiError::not_found(pods, "x"),
                404,
                "NotFound",
                r#"pods "x" not found"#,
            ),
            (
                ApiError::not_found(deploy, "web"),
                404,
                "NotFound",
                r#"deployments.apps "web" not found"#,
            ),
            (
                ApiError::already_exists(pods, "x"),
                409,
                "AlreadyExists",
                r#"pods "x" already exists"#,
            ),
            (
                ApiError::conflict(deploy, "web"),
                409,
                "Conflict",
                r#"Operation cannot be fulfilled on deployments.apps "web": the object has been modified; please apply your changes to the latest version and try again"#,
            ),
            (
                ApiError::invalid(pods, "X", vec![Cause::invalid("metadata.name", "X", "bad")]),
                422,
                "Invalid",
                r#"Pod "X" is invalid: metadata.name: Invalid value: "X": bad"#,
            ),
            (
                ApiError::invalid(
                    pods,
                    "p",
                    vec![
                        Cause::required("spec.containers", ""),
                        Cause::required("spec.x", ""),
                    ],
                ),
                422,
                "Invalid",
                r#"Pod "p" is invalid: [spec.containers: Required value, spec.x: Required value]"#,
            ),
            (
                ApiError::too_old(3, 10),
                410,
                "Expired",
                "too old resource version: 3 (10)",
            ),
            (ApiError::Unauthorized, 401, "Unauthorized", "Unauthorized"),
            (
                ApiError::Forbidden(Box::new(ForbiddenDetail {
                    user: "bob".into(),
                    verb: "create".into(),
                    resource: "pods".into(),
                    group: "".into(),
                    namespace: Some("default".into()),
                    name: None,
                })),
                403,
                "Forbidden",
                r#"pods is forbidden: User "bob" cannot create resource "pods" in API group "" in the namespace "default""#,
            ),
            (
                ApiError::Forbidden(Box::new(ForbiddenDetail {
                    user: "bob".into(),
                    verb: "list".into(),
                    resource: "nodes".into(),
                    group: "".into(),
                    namespace: None,
                    name: None,
                })),
                403,
                "Forbidden",
                r#"nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" at the cluster scope"#,
            ),
            (
                ApiError::TooLarge(3145728),
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            ),
            (
                ApiError::MethodNotAllowed,
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ),
        ];
        for (err, code, reason, message) in cases {
            let s = err.to_status();
            assert_eq!(s["code"], code, "{err:?}");
            assert_eq!(s["reason"], reason, "{err:?}");
            assert_eq!(s["message"], message, "{err:?}");
            assert_eq!(s["kind"], "Status");
        }
    }

    #[test]
    fn details_name_the_object() {
        let deploy = registry::lookup("apps", "v1", "deployments").unwrap();
        let s = ApiError::not_found(deploy, "web").to_status();
        assert_eq!(
            s["details"],
            json!({"name": "web", "group": "apps", "kind": "deployments"})
        );
    }
}
