//! What an instance is given at start besides its binary: environment
//! variables (literal, or a secret from `narun-secrets`) and files mounted
//! from `narun-files`.

use serde::{Deserialize, Serialize};

use crate::serde_helpers::{is_default, nullable, scalar_string};

/// One environment variable. `value` and `valueFromSecret` are mutually
/// exclusive; both empty sets the variable to `""` (as in Go).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name; must not contain `=` or a space.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Literal value.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "scalar_string")]
    pub value: String,
    /// Key in the `narun-secrets` KV bucket; the daemon decrypts it at start.
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub value_from_secret: String,
}

impl EnvVar {
    /// A variable with a literal value.
    pub fn value(name: impl Into<String>, value: impl Into<String>) -> Self {
        EnvVar {
            name: name.into(),
            value: value.into(),
            value_from_secret: String::new(),
        }
    }

    /// A variable whose value is the secret `secret` from `narun-secrets`.
    pub fn from_secret(name: impl Into<String>, secret: impl Into<String>) -> Self {
        EnvVar {
            name: name.into(),
            value: String::new(),
            value_from_secret: secret.into(),
        }
    }
}

/// A file placed in the instance work dir before start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountSpec {
    /// Path relative to the work dir; no `..`, not absolute.
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    /// Where the content comes from.
    #[serde(deserialize_with = "nullable")]
    pub source: MountSource,
}

/// Source of a [`MountSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MountSource {
    /// Object name in the `narun-files` object store (required).
    #[serde(skip_serializing_if = "is_default", deserialize_with = "nullable")]
    pub object_store: String,
}
