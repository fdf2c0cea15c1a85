//! Serde helpers shared by the spec types: Go's `omitempty` (skip defaults),
//! `null` as the default, and scalars read as text the way Go's yaml.v3 does.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::select::Labels;

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A `null` (YAML `key:` with nothing after it) means the default, as in Go.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A field default that is not `T::default()`, for [`nullable_or`].
pub(crate) trait FieldDefault {
    type T;
    const DEFAULT: Self::T;
}

/// Like [`nullable`] for fields whose default is not `T::default()`.
pub(crate) fn nullable_or<'de, D, C>(d: D) -> Result<C::T, D::Error>
where
    D: Deserializer<'de>,
    C: FieldDefault,
    C::T: Deserialize<'de>,
{
    Ok(Option::deserialize(d)?.unwrap_or(C::DEFAULT))
}

/// Visitor turning a scalar into text the way Go's yaml.v3 fills a string
/// field: strings as they are, integers and booleans as their text. Floats
/// are refused because their original spelling is lost (`1.10` would become
/// `1.1`): quote them.
struct ScalarString;

impl<'de> Visitor<'de> for ScalarString {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string (quote numbers with a fractional part, e.g. \"1.10\")")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

pub(crate) fn optional_scalar_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    d.deserialize_any(ScalarString)
}

pub(crate) fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(optional_scalar_string(d)?.unwrap_or_default())
}

/// A string deserialised with [`ScalarString`].
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar_string(d).map(Text)
    }
}

pub(crate) fn scalar_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<Text>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.0)
        .collect())
}

pub(crate) fn optional_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Labels>, D::Error> {
    Ok(Option::<BTreeMap<String, Text>>::deserialize(d)?
        .map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()))
}
