//! Watching objects that may not parse. A list or a watch of a kind is one
//! response: with the typed API, one object that does not parse (a value an
//! older schema allowed, or one the fake API server took without checking)
//! fails the whole list, and every namespace's runs stop. The agent and the
//! controller watch `Lenient<K>` instead: every object arrives, and one that
//! does not parse is logged with its name and skipped.

use std::borrow::Cow;

use kube::api::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// An object of kind `K` as listed: its metadata, and the object itself or
/// why it does not parse.
#[derive(Clone, Debug)]
pub struct Lenient<K> {
    /// What could be read of its metadata (its namespace and name at least,
    /// for a message).
    pub metadata: ObjectMeta,
    /// The object, or the parse error.
    pub parsed: Result<K, String>,
}

impl<K> Lenient<K> {
    /// `namespace/name`, for messages.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

impl<K: Resource<DynamicType = ()>> Lenient<K> {
    /// The object; `None` (logged once here, with its name) when it does
    /// not parse.
    pub fn object(&self) -> Option<&K> {
        match &self.parsed {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(
                    namespace = self.metadata.namespace.as_deref().unwrap_or_default(),
                    name = self.metadata.name.as_deref().unwrap_or_default(),
                    "{} {} does not parse, skipped until it is fixed: {e}",
                    K::kind(&()),
                    self.key()
                );
                None
            }
        }
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let metadata = v
            .get("metadata")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        let parsed = serde_json::from_value::<K>(v).map_err(|e| e.to_string());
        Ok(Lenient { metadata, parsed })
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::VolumeBackup;

    #[test]
    fn an_object_that_does_not_parse_keeps_its_name_and_the_list_goes_on() {
        let list: Vec<Lenient<VolumeBackup>> = serde_json::from_value(serde_json::json!([
            {"apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
             "metadata": {"name": "bad", "namespace": "team-b"},
             "spec": {"pvc": "data", "group": {"name": "g", "size": 4294967296u64}}},
            {"apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
             "metadata": {"name": "good", "namespace": "team-a"},
             "spec": {"pvc": "data"}}
        ]))
        .unwrap();
        assert_eq!(list[0].key(), "team-b/bad");
        assert!(list[0].object().is_none());
        assert!(list[0].parsed.as_ref().unwrap_err().contains("4294967296"));
        assert_eq!(list[1].object().unwrap().spec.pvc.as_deref(), Some("data"));
        assert_eq!(
            <Lenient<VolumeBackup> as Resource>::plural(&()),
            "volumebackups"
        );
    }
}
