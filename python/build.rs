//! The module finds libtorch where the `torch` package it is installed beside keeps it
//! (`site-packages/torch/lib`), so it uses the very libtorch that `import torch`
//! loaded, whatever the environment's path.

fn main() {
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
}
