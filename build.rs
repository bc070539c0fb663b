//! Bakes the libtorch library folder into the binaries' run path, so `ftedit`
//! runs without `LD_LIBRARY_PATH`. The path is canonicalised: libtorch's own
//! RPATH (`$ORIGIN/../../nvidia/...`) expects the pip layout, which a symlinked
//! path would break.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
