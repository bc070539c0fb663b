//! Bakes the libtorch library folder into the binaries' run path, so `ftedit`
//! runs without `LD_LIBRARY_PATH`. The path is canonicalised: libtorch's own
//! RPATH (`$ORIGIN/../../nvidia/...`) expects the pip layout, which a symlinked
//! path would break. It also compiles the few lines of C++ that reach what tch does not:
//! `csrc/autocast.cpp` switches libtorch's autocast on for the CPU (mixed precision),
//! `csrc/profile.cpp` sums libtorch's op profiler into a table (`FTEDIT_PROFILE`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // .cargo/config.toml sets it to ./libtorch, which ./setup.sh links.
    let libtorch = std::env::var("LIBTORCH").expect(
        "LIBTORCH is not set: run ./setup.sh, which installs libtorch and links ./libtorch",
    );
    let root = PathBuf::from(libtorch);
    let lib = root.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());

    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/profile.cpp");
    cc::Build::new()
        .cpp(true)
        .file("csrc/autocast.cpp")
        .file("csrc/profile.cpp")
        .include(root.join("include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("ftedit_csrc");
}
