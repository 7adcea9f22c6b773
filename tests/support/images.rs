//! Test images as OCI archives, built here from Debian's busybox-static: one layer with
//! `/bin/busybox` and applet symlinks, a config, a manifest and an index, written as an
//! OCI image layout and tarred.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Applets the images link to busybox.
const APPLETS: &[&str] = &[
    "sh", "httpd", "sleep", "cat", "echo", "env", "head", "tr", "dd", "mkdir", "ls", "true",
    "false", "wc", "seq",
];

/// An image to build.
#[derive(Debug, Clone)]
pub struct ImageDef {
    /// Its full name (`mill.test/httpd:1`), annotated in the index.
    pub name: String,
    /// Its Cmd.
    pub cmd: Vec<String>,
    /// Its Env.
    pub env: Vec<String>,
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// An HTTP server on `$PORT` (busybox httpd) serving `/www`, with `/www/env.txt` holding
/// its environment at start and `/health` answering 200.
pub fn httpd(name: &str) -> ImageDef {
    ImageDef {
        name: name.into(),
        cmd: sh("mkdir -p /www && env > /www/env.txt && echo ok > /www/health && echo \"serving on $PORT\" && exec httpd -f -v -p $PORT -h /www"),
        env: vec!["PATH=/bin".into(), "MODE=image".into()],
    }
}

/// Like [`httpd`] but `/health` is missing (404).
pub fn unhealthy(name: &str) -> ImageDef {
    ImageDef {
        name: name.into(),
        cmd: sh("mkdir -p /www && exec httpd -f -p $PORT -h /www"),
        env: vec!["PATH=/bin".into()],
    }
}

/// Exits at once with code 3.
pub fn exits3(name: &str) -> ImageDef {
    ImageDef {
        name: name.into(),
        cmd: sh("echo exiting; exit 3"),
        env: vec!["PATH=/bin".into()],
    }
}

/// Ignores SIGTERM and runs until killed.
pub fn ignores_sigterm(name: &str) -> ImageDef {
    ImageDef {
        name: name.into(),
        cmd: sh("trap '' TERM; echo ready; while true; do sleep 1; done"),
        env: vec!["PATH=/bin".into()],
    }
}

/// Allocates 256 MiB at once (dd's block buffer): past any small memory limit.
pub fn memory_hog(name: &str) -> ImageDef {
    ImageDef {
        name: name.into(),
        cmd: sh("echo allocating; dd if=/dev/zero of=/dev/null bs=256M count=1; echo survived"),
        env: vec!["PATH=/bin".into()],
    }
}

fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The layer: busybox, its applets, and `files` (path in the image, contents; mode 0644).
fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let busybox = std::fs::read("/usr/bin/busybox")
        .or_else(|_| std::fs::read("/bin/busybox"))
        .expect("busybox-static is installed (run scripts/setup)");
    let mut builder = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("www", 0o755),
    ] {
        dir(&mut builder, d, mode);
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(0);
    builder
        .append_data(&mut h, "bin/busybox", busybox.as_slice())
        .unwrap();
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        builder
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    for (path, contents) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(contents.len() as u64);
        h.set_mtime(0);
        builder.append_data(&mut h, path, *contents).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Writes `def` as an OCI archive into `dir`; returns the archive's path.
pub fn build(def: &ImageDef, dir: &Path) -> PathBuf {
    build_with_files(def, &[], dir)
}

/// Files baked into [`build_with_files`]'s image for a server that is healthy at start:
/// `/www/health` = `ok`, so busybox httpd answers `/health` without writing it first.
pub const HEALTH_FILE: (&str, &[u8]) = ("www/health", b"ok\n");

/// Like [`build`], with `files` (paths relative to the image's root, mode 0644) added to
/// its layer.
pub fn build_with_files(def: &ImageDef, files: &[(&str, &[u8])], dir: &Path) -> PathBuf {
    let layout = tempfile::tempdir_in(dir).unwrap();
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = digest(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        (d, bytes.len())
    };
    let layer = layer(files);
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": def.cmd, "Env": def.env, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "org.opencontainers.image.ref.name": def.name,
                "io.containerd.image.name": def.name,
            },
        }],
    });
    std::fs::write(
        layout.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let file_name = def.name.replace(['/', ':'], "_") + ".tar";
    let archive = dir.join(file_name);
    let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", layout.path()).unwrap();
    builder.finish().unwrap();
    archive
}
