//! Devices and the libtorch runtime.
//!
//! The binary links only libtorch's CPU library; CUDA support lives in
//! `libtorch_cuda.so`, which registers itself when loaded. We load it on demand, so the
//! same binary runs on machines without the CUDA stack and uses a GPU where one is.

use std::sync::OnceLock;

use tch::{Device, Kind};

use crate::error::{Error, Result};

/// Loads libtorch's CUDA library if it is present and loadable; returns whether a
/// CUDA device is then available.
pub fn cuda_available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid C string; the handle is kept for the process life.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !handle.is_null() && tch::Cuda::is_available()
    })
}

/// Parses a device name: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available).
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if cuda_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        _ => {
            let index = match name {
                "cuda" => Some(0),
                _ => name
                    .strip_prefix("cuda:")
                    .and_then(|i| i.parse::<usize>().ok()),
            };
            match index {
                Some(i) if cuda_available() => Ok(Device::Cuda(i)),
                Some(_) => Err(Error::Input(format!(
                    "device '{name}' asked for, but no CUDA device is available (libtorch_cuda.so not found or no GPU)"
                ))),
                None => Err(Error::Input(format!(
                    "unknown device '{name}' (use cpu, cuda, cuda:N or auto)"
                ))),
            }
        }
    }
}

/// Parses a parameter dtype: `f32`, `bf16` or `f16`.
pub fn parse_kind(name: &str) -> Result<Kind> {
    match name {
        "f32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" => Ok(Kind::Half),
        _ => Err(Error::Input(format!(
            "unknown dtype '{name}' (use f32, bf16 or f16)"
        ))),
    }
}
