//! CSI snapshots: the VolumeSnapshot kinds (`snapshot.storage.k8s.io/v1`,
//! not in k8s-openapi: [`VolumeSnapshot`] holds the fields coffer uses),
//! group snapshots, and which VolumeSnapshotClass a claim is snapshotted with.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, ResourceExt};

use crate::api::{kube_err, Error};

/// The CSI snapshot API group.
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

/// The PVC annotation that names the VolumeSnapshotClass to use.
pub const CLASS_ANNOTATION: &str = "backup.coffer.dev/snapshot-class";

/// The VolumeSnapshotClass label that makes a class coffer's choice for its
/// driver.
pub const DEFAULT_CLASS_LABEL: &str = "backup.coffer.dev/default";

/// The annotation that makes a class the driver's default.
pub const IS_DEFAULT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// The API group of VolumeGroupSnapshots.
pub const GROUP_SNAPSHOT_GROUP: &str = "groupsnapshot.storage.k8s.io";

/// The annotation that makes a VolumeGroupSnapshotClass the driver's default.
pub const IS_DEFAULT_GROUP_CLASS: &str = "groupsnapshot.storage.kubernetes.io/is-default-class";

/// A CSI VolumeSnapshot (the fields coffer reads and writes).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    /// What is snapshotted.
    pub source: VolumeSnapshotSource,
    /// The class (the driver's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// A VolumeSnapshot's source.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    /// A PVC in the snapshot's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    /// A pre-provisioned content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

/// A CSI VolumeSnapshotContent (cluster-scoped; the fields coffer reads
/// and writes): the snapshot on the storage, which a VolumeSnapshot binds.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotContent",
    status = "VolumeSnapshotContentStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSpec {
    /// `Delete` or `Retain`: whether the storage's snapshot goes with it.
    pub deletion_policy: String,
    /// The CSI driver.
    pub driver: String,
    /// A volume to snapshot, or an existing snapshot's handle.
    pub source: ContentSource,
    /// The VolumeSnapshot it is bound to.
    pub volume_snapshot_ref: SnapshotRef,
    /// The class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// Where a VolumeSnapshotContent's snapshot comes from.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContentSource {
    /// The volume (dynamic provisioning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
    /// An existing snapshot on the storage (pre-provisioned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
}

/// The VolumeSnapshot a content is bound to.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What the snapshot controller reports of a content.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    /// The snapshot's handle on the storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    /// Whether a volume can be provisioned from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
}

/// The handle of the snapshot that `content` holds: its status's, or the
/// one it was pre-provisioned with.
pub fn snapshot_handle(content: &VolumeSnapshotContent) -> Option<&str> {
    content
        .status
        .as_ref()
        .and_then(|s| s.snapshot_handle.as_deref())
        .or(content.spec.source.snapshot_handle.as_deref())
        .filter(|h| !h.is_empty())
}

/// The same snapshot exposed in another namespace, as Velero's data mover
/// does: a pre-provisioned content `name` with `original`'s handle, driver
/// and class, bound to VolumeSnapshot `namespace/name`. Its deletion policy
/// is Retain, so that deleting it leaves the storage's snapshot to the
/// original, which owns it.
pub fn exposed_content(
    original: &VolumeSnapshotContent,
    handle: &str,
    namespace: &str,
    name: &str,
) -> VolumeSnapshotContent {
    VolumeSnapshotContent::new(
        name,
        VolumeSnapshotContentSpec {
            deletion_policy: "Retain".into(),
            driver: original.spec.driver.clone(),
            source: ContentSource {
                volume_handle: None,
                snapshot_handle: Some(handle.into()),
            },
            volume_snapshot_ref: SnapshotRef {
                namespace: namespace.into(),
                name: name.into(),
            },
            volume_snapshot_class_name: original.spec.volume_snapshot_class_name.clone(),
        },
    )
}

/// The VolumeSnapshot `namespace/name` bound to content `name`.
pub fn exposed_snapshot(
    original: &VolumeSnapshotContent,
    namespace: &str,
    name: &str,
) -> VolumeSnapshot {
    let mut vs = VolumeSnapshot::new(
        name,
        VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: None,
                volume_snapshot_content_name: Some(name.into()),
            },
            volume_snapshot_class_name: original.spec.volume_snapshot_class_name.clone(),
        },
    );
    vs.metadata.namespace = Some(namespace.into());
    vs
}

/// What the snapshot controller reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    /// The content it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// Whether a volume can be provisioned from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest volume it restores into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// The last error of the snapshot controller or the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    /// The VolumeGroupSnapshot it was taken in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_name: Option<String>,
}

/// A snapshot error.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How far a VolumeSnapshot is.
#[derive(Clone, Debug, PartialEq)]
pub enum SnapshotState {
    /// Not ready yet.
    Pending,
    /// Ready, with its restore size when known.
    Ready(Option<Quantity>),
    /// The driver or the snapshot controller reported an error.
    Failed(String),
}

/// What a VolumeSnapshot's status says.
pub fn snapshot_state(vs: &VolumeSnapshot) -> SnapshotState {
    let Some(st) = &vs.status else {
        return SnapshotState::Pending;
    };
    if let Some(m) = st.error.as_ref().and_then(|e| e.message.clone()) {
        return SnapshotState::Failed(m);
    }
    if st.ready_to_use == Some(true) {
        return SnapshotState::Ready(st.restore_size.clone());
    }
    SnapshotState::Pending
}

/// How far a VolumeGroupSnapshot (read as a dynamic object, whatever its
/// version) is; its members' sizes are on their VolumeSnapshots.
pub fn group_snapshot_state(vgs: &DynamicObject) -> SnapshotState {
    let st = &vgs.data["status"];
    if let Some(m) = st["error"]["message"].as_str() {
        return SnapshotState::Failed(m.to_string());
    }
    if st["readyToUse"].as_bool() == Some(true) {
        return SnapshotState::Ready(None);
    }
    SnapshotState::Pending
}

/// A VolumeSnapshotClass (cluster-scoped; read as a dynamic object).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotClass {
    /// Its name.
    pub name: String,
    /// Its CSI driver.
    pub driver: String,
    /// Labelled `backup.coffer.dev/default: "true"`.
    pub coffer_default: bool,
    /// Annotated as the driver's default class.
    pub driver_default: bool,
}

impl SnapshotClass {
    /// Reads one from the API's object (a VolumeSnapshotClass, or a
    /// VolumeGroupSnapshotClass with `default_annotation`
    /// [`IS_DEFAULT_GROUP_CLASS`]).
    pub fn from_dynamic(o: &DynamicObject, default_annotation: &str) -> SnapshotClass {
        let is_true = |m: &Option<BTreeMap<String, String>>, k: &str| {
            m.as_ref()
                .and_then(|m| m.get(k))
                .is_some_and(|v| v == "true")
        };
        SnapshotClass {
            name: o.metadata.name.clone().unwrap_or_default(),
            driver: o.data["driver"].as_str().unwrap_or_default().to_string(),
            coffer_default: is_true(&o.metadata.labels, DEFAULT_CLASS_LABEL),
            driver_default: is_true(&o.metadata.annotations, default_annotation),
        }
    }
}

/// The class for a snapshot of a PVC of `driver`: the PVC's annotation, else
/// the driver's class labelled `backup.coffer.dev/default`, else the driver's
/// default class. The error says what to label or annotate.
pub fn choose_class(
    pvc: &str,
    annotation: Option<&str>,
    driver: &str,
    classes: &[SnapshotClass],
) -> Result<String, String> {
    if let Some(name) = annotation {
        return match classes.iter().find(|c| c.name == name) {
            Some(c) if c.driver == driver => Ok(c.name.clone()),
            Some(c) => Err(format!(
                "VolumeSnapshotClass {name:?} (annotation {CLASS_ANNOTATION} of PVC {pvc}) is for driver {}, but the PVC's volume is on {driver}",
                c.driver
            )),
            None => Err(format!(
                "VolumeSnapshotClass {name:?} (annotation {CLASS_ANNOTATION} of PVC {pvc}) does not exist"
            )),
        };
    }
    let of_driver: Vec<&SnapshotClass> = classes.iter().filter(|c| c.driver == driver).collect();
    let coffer_default: fn(&SnapshotClass) -> bool = |c| c.coffer_default;
    let driver_default: fn(&SnapshotClass) -> bool = |c| c.driver_default;
    for pick in [coffer_default, driver_default] {
        let picked: Vec<&SnapshotClass> = of_driver.iter().copied().filter(|c| pick(c)).collect();
        match picked.as_slice() {
            [] => continue,
            [one] => return Ok(one.name.clone()),
            several => {
                let names: Vec<&str> = several.iter().map(|c| c.name.as_str()).collect();
                return Err(format!(
                    "several VolumeSnapshotClasses for driver {driver} are defaults ({}); label exactly one with {DEFAULT_CLASS_LABEL}=true",
                    names.join(", ")
                ));
            }
        }
    }
    Err(format!(
        "no VolumeSnapshotClass for driver {driver} is a default: label one with {DEFAULT_CLASS_LABEL}=true, or annotate PVC {pvc} with {CLASS_ANNOTATION}"
    ))
}

/// The VolumeGroupSnapshot API, when the cluster serves it.
#[derive(Clone)]
pub(crate) struct GroupApi {
    pub(crate) snapshots: ApiResource,
    pub(crate) classes: ApiResource,
}

/// How long a discovery of the VolumeGroupSnapshot API stands: runs of a
/// group ask for it on every pass, and the API may be installed later.
pub(crate) const GROUP_API_TTL: Duration = Duration::from_secs(60);

/// The last discovery of the VolumeGroupSnapshot API, and when it was made.
#[derive(Default)]
pub(crate) struct GroupApiCache(Mutex<Option<(std::time::Instant, Option<GroupApi>)>>);

/// The VolumeGroupSnapshot API, where the cluster serves it (discovered at
/// most every [`GROUP_API_TTL`]).
pub(crate) async fn group_snapshot_api(
    client: &Client,
    cache: &GroupApiCache,
) -> Result<Option<GroupApi>, Error> {
    if let Some((at, api)) = &*cache.0.lock().unwrap_or_else(|e| e.into_inner()) {
        if at.elapsed() < GROUP_API_TTL {
            return Ok(api.clone());
        }
    }
    let api = discover_group_snapshot_api(client).await?;
    *cache.0.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((std::time::Instant::now(), api.clone()));
    Ok(api)
}

pub(crate) async fn discover_group_snapshot_api(
    client: &Client,
) -> Result<Option<GroupApi>, Error> {
    let g = match kube::discovery::group(client, GROUP_SNAPSHOT_GROUP).await {
        Ok(g) => g,
        Err(kube::Error::Discovery(_)) => return Ok(None),
        Err(e) => return Err(kube_err("discovering the VolumeGroupSnapshot API")(e)),
    };
    Ok(
        match (
            g.recommended_kind("VolumeGroupSnapshot"),
            g.recommended_kind("VolumeGroupSnapshotClass"),
        ) {
            (Some((snapshots, _)), Some((classes, _))) => Some(GroupApi { snapshots, classes }),
            _ => None,
        },
    )
}

/// Every snapshot class of kind `ar` (VolumeSnapshotClass or
/// VolumeGroupSnapshotClass), with `default_annotation` marking the
/// driver's default.
pub(crate) async fn list_classes(
    client: &Client,
    ar: &ApiResource,
    what: &str,
    default_annotation: &str,
) -> Result<Vec<SnapshotClass>, Error> {
    Ok(Api::<DynamicObject>::all_with(client.clone(), ar)
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("listing {what}")))?
        .items
        .iter()
        .map(|o| SnapshotClass::from_dynamic(o, default_annotation))
        .collect())
}

/// The snapshot class for a PVC, from its driver.
pub(crate) async fn snapshot_class(
    client: &Client,
    pvc: &PersistentVolumeClaim,
) -> Result<Result<String, String>, Error> {
    let name = format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any());
    let Some(driver) = pvc_driver(client, pvc).await? else {
        return Ok(Err(format!("PersistentVolumeClaim {name} is not on a CSI volume (no CSI driver on its PV or StorageClass); back it up with method Filesystem")));
    };
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(SNAPSHOT_GROUP, "v1", "VolumeSnapshotClass"),
        "volumesnapshotclasses",
    );
    let classes = list_classes(client, &ar, "VolumeSnapshotClasses", IS_DEFAULT_CLASS).await?;
    let annotation = pvc.annotations().get(CLASS_ANNOTATION).map(String::as_str);
    Ok(choose_class(&name, annotation, &driver, &classes))
}

/// The CSI driver of a PVC's volume: its PV's, else its StorageClass's
/// provisioner.
pub(crate) async fn pvc_driver(
    client: &Client,
    pvc: &PersistentVolumeClaim,
) -> Result<Option<String>, Error> {
    let driver = match pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) {
        Some(pv) => Api::<PersistentVolume>::all(client.clone())
            .get_opt(&pv)
            .await
            .map_err(kube_err(format!("reading PV {pv}")))?
            .and_then(|pv| pv.spec?.csi.map(|c| c.driver)),
        None => None,
    };
    let driver = match driver {
        Some(d) => Some(d),
        None => match pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()) {
            Some(sc) => Api::<StorageClass>::all(client.clone())
                .get_opt(&sc)
                .await
                .map_err(kube_err(format!("reading StorageClass {sc}")))?
                .map(|sc| sc.provisioner),
            None => None,
        },
    };
    Ok(driver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, coffer: bool, default: bool) -> SnapshotClass {
        SnapshotClass {
            name: name.into(),
            driver: driver.into(),
            coffer_default: coffer,
            driver_default: default,
        }
    }

    #[test]
    fn class_choice_follows_annotation_then_label_then_driver_default() {
        let classes = [
            class("fast", "csi.a", false, true),
            class("backup", "csi.a", true, false),
            class("other", "csi.b", false, true),
        ];
        assert_eq!(
            choose_class("db", None, "csi.a", &classes),
            Ok("backup".into())
        );
        assert_eq!(
            choose_class("db", Some("fast"), "csi.a", &classes),
            Ok("fast".into())
        );
        assert_eq!(
            choose_class("db", None, "csi.b", &classes),
            Ok("other".into())
        );
        let e = choose_class("db", Some("other"), "csi.a", &classes).unwrap_err();
        assert!(e.contains("is for driver csi.b"), "{e}");
        let e = choose_class("db", Some("gone"), "csi.a", &classes).unwrap_err();
        assert!(
            e.contains("\"gone\"") && e.contains("does not exist"),
            "{e}"
        );
        let e = choose_class("db", None, "csi.c", &classes).unwrap_err();
        assert!(
            e.contains("csi.c") && e.contains(DEFAULT_CLASS_LABEL),
            "{e}"
        );
        let two = [
            class("x", "csi.a", true, false),
            class("y", "csi.a", true, false),
        ];
        let e = choose_class("db", None, "csi.a", &two).unwrap_err();
        assert!(e.contains("x, y"), "{e}");
    }
}
