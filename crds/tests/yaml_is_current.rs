//! The CRD manifests checked in under `crds/yaml/` must match the Rust types.
//! Regenerate them with `UPDATE_CRDS=1 cargo test -p mill-crds`.

use std::path::Path;

#[test]
fn checked_in_crd_yaml_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    let files = mill_crds::crd_files();
    if std::env::var_os("UPDATE_CRDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, yaml) in &files {
            std::fs::write(dir.join(name), yaml).unwrap();
        }
    }
    let mut stale = Vec::new();
    for (name, yaml) in &files {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        if on_disk != *yaml {
            stale.push(name.clone());
        }
    }
    let mut expected: Vec<String> = files.into_iter().map(|(n, _)| n).collect();
    expected.sort();
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    present.sort();
    assert!(
        stale.is_empty(),
        "crds/yaml is out of date for {stale:?}: run `UPDATE_CRDS=1 cargo test -p mill-crds`"
    );
    assert_eq!(present, expected, "crds/yaml holds files no kind generates");
}

#[test]
fn every_kind_has_status_categories_and_columns() {
    for crd in mill_crds::all_crds() {
        let names = &crd.spec.names;
        let categories = names.categories.clone().unwrap_or_default();
        assert!(
            categories.contains(&"all".to_string()) && categories.contains(&"mill".to_string()),
            "{} lacks categories",
            names.kind
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} lacks a status subresource",
            names.kind
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{} has too few printer columns",
            names.kind
        );
    }
}
