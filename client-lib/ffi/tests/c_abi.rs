//! The C header is current, and a real C program builds against the library and runs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn header_matches_the_code() {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("generate the header")
        .write(&mut generated);
    let header = dir.join("include/fieldsync.h");
    if std::env::var_os("FIELDSYNC_BLESS").is_some() {
        std::fs::write(&header, &generated).expect("write header");
    }
    let committed = std::fs::read(&header).unwrap_or_default();
    assert!(
        committed == generated,
        "include/fieldsync.h is stale: run `FIELDSYNC_BLESS=1 cargo test -p fieldsync-ffi --test c_abi`"
    );
}

/// The directory holding the built library (`target/<profile>`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Cargo builds only the rlib for this test; build the shared library itself (a no-op when
/// it is current) with the same profile and target directory.
fn build_shared_library(lib: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate_dir())
        .args([
            "build",
            "--quiet",
            "-p",
            "fieldsync-ffi",
            "--lib",
            "--target-dir",
        ])
        .arg(lib.parent().expect("target dir"));
    if lib.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "building the library failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_c_program_embeds_the_replica() {
    let lib = lib_dir();
    build_shared_library(&lib);
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = tmp.path().join("embed");
    let root = crate_dir().join("../..");
    let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg(root.join("examples/c/embed.c"))
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg("-L")
        .arg(&lib)
        .arg("-lfieldsync")
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(
        cc.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&exe)
        .arg(tmp.path().join("dealer.db"))
        .env("LD_LIBRARY_PATH", &lib)
        .env("DYLD_LIBRARY_PATH", &lib)
        .output()
        .expect("run the C program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "embed failed: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("\"industry\":\"mining\""), "{stdout}");
    assert!(
        stdout.contains("refused as expected: role rep may not set"),
        "{stdout}"
    );
    assert!(stdout.contains("\"total_minor\":250000000"), "{stdout}");
    assert!(
        stdout.contains("attachment saved: 100000 bytes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"upload_files\":1,\"upload_bytes\":100000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("changes waiting for the relay: 5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrong passphrase refused: wrong passphrase"),
        "{stdout}"
    );
    assert!(
        stdout.contains("encrypted customers: [{\"name\":\"Erdos Drilling\"}]"),
        "{stdout}"
    );
    assert!(stdout.contains("offline lease: null"), "{stdout}");
    let on_disk = std::fs::read(tmp.path().join("dealer.db.encrypted.db")).expect("read");
    assert!(!on_disk.windows(14).any(|w| w == b"Erdos Drilling"));
}
