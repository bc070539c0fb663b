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

/// How a model computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// bf16-mixed where the device multiplies bf16 matrices in hardware (a CUDA GPU; a
    /// CPU with AMX-BF16, AVX512-BF16 or Arm BF16), f32 elsewhere ([`Precision::resolve`]).
    #[default]
    Auto,
    /// In the parameters' own dtype (f32 for loaded models).
    F32,
    /// bf16 mixed precision, as `torch.autocast(device, dtype=torch.bfloat16)`: matrix
    /// products in bf16, everything autocast keeps in f32 (norms, softmax, losses) in
    /// f32; master weights, gradients and optimizer state stay f32.
    Bf16Mixed,
}

impl Precision {
    /// Parses `auto`, `f32` or `bf16-mixed`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(Precision::Auto),
            "f32" => Ok(Precision::F32),
            "bf16-mixed" | "bf16" => Ok(Precision::Bf16Mixed),
            _ => Err(Error::Input(format!(
                "unknown precision '{name}' (use auto, f32 or bf16-mixed)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16Mixed => "bf16-mixed",
        }
    }

    /// What runs on `device` (never `Auto`), and why, for reports: `auto` takes
    /// bf16-mixed only where bf16 matrix products run in hardware, since emulated bf16
    /// is slower than f32.
    pub fn resolve(self, device: Device) -> (Precision, String) {
        match self {
            Precision::F32 | Precision::Bf16Mixed => (self, "asked for".into()),
            Precision::Auto if device != Device::Cpu => (
                Precision::Bf16Mixed,
                "auto: a CUDA GPU multiplies bf16 matrices in hardware".into(),
            ),
            Precision::Auto => match cpu_bf16() {
                Some(flag) => (
                    Precision::Bf16Mixed,
                    format!("auto: this CPU multiplies bf16 matrices in hardware ({flag})"),
                ),
                None => (
                    Precision::F32,
                    "auto: this CPU has no bf16 matrix instructions (AMX-BF16, AVX512-BF16, \
                     Arm BF16), where bf16 is emulated and slower than f32"
                        .into(),
                ),
            },
        }
    }
}

unsafe extern "C" {
    fn ftedit_autocast_enter(cuda: i32, half: i32) -> i32;
    fn ftedit_autocast_exit(cuda: i32, was: i32) -> i32;
    fn ftedit_autocast_set_enabled(cuda: i32, on: i32) -> i32;
    fn ftedit_profile_start() -> i32;
    fn ftedit_profile_stop(path: *const std::ffi::c_char) -> i32;
}

/// The environment variable that asks for a per-op profile of each training run: the file
/// the table goes to ([`OpProfile`]).
pub const PROFILE_ENV: &str = "FTEDIT_PROFILE";

/// libtorch's op profiler while it lives: every op this thread runs, and the backward
/// passes it starts, timed and summed by op name into a tab-separated table (self and
/// total milliseconds, calls), then by op and input shapes. For finding where a training
/// step's time goes (`FTEDIT_PROFILE=FILE ftedit edit …`); it slows the ops it times a
/// little.
pub struct OpProfile {
    path: std::path::PathBuf,
}

impl OpProfile {
    /// Starts the profiler; [`OpProfile::finish`] writes the table to `path`.
    pub fn start(path: impl Into<std::path::PathBuf>) -> Result<Self> {
        // SAFETY: a plain C call into libtorch's profiler; it catches exceptions.
        if unsafe { ftedit_profile_start() } < 0 {
            return Err(Error::Input("libtorch's profiler did not start".into()));
        }
        Ok(OpProfile { path: path.into() })
    }

    /// Starts one when [`PROFILE_ENV`] names a file.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var_os(PROFILE_ENV) {
            Some(p) if !p.is_empty() => Self::start(p).map(Some),
            _ => Ok(None),
        }
    }

    /// Stops the profiler and writes the table.
    pub fn finish(self) -> Result<()> {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Input(format!("profile path {:?} holds a NUL", self.path)))?;
        // SAFETY: `c` outlives the call, which catches exceptions.
        if unsafe { ftedit_profile_stop(c.as_ptr()) } < 0 {
            return Err(Error::io(
                &self.path,
                std::io::Error::other("the op profile could not be written"),
            ));
        }
        Ok(())
    }
}

/// The C side's device-type argument: 1 for CUDA, 0 for the CPU.
fn cuda_flag(device: Device) -> i32 {
    i32::from(device != Device::Cpu)
}

/// libtorch's autocast to bf16 on one device type while it lives (thread-local, as in
/// PyTorch); dropping it restores what was there before.
pub struct Autocast {
    cuda: i32,
    was: i32,
}

impl Autocast {
    /// Autocast to bf16 for `device`'s device type.
    pub fn bf16(device: Device) -> Result<Self> {
        let cuda = cuda_flag(device);
        // SAFETY: a plain C call into libtorch's autocast state; it catches exceptions.
        let was = unsafe { ftedit_autocast_enter(cuda, 0) };
        if was < 0 {
            return Err(Error::Input(format!(
                "libtorch refused autocast on {device:?}"
            )));
        }
        Ok(Autocast { cuda, was })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `bf16`; restores the state that call returned.
        unsafe {
            ftedit_autocast_exit(self.cuda, self.was);
        }
    }
}

/// Whether autocast is on for `device`'s device type on this thread.
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: a plain C call that only reads libtorch's thread-local autocast state.
    unsafe { ftedit_autocast_set_enabled(cuda_flag(device), -1) == 1 }
}

/// Autocast switched off for `device`'s device type while it lives (its dtype, nesting
/// and cast cache kept), for an op that must run in f32 inside a bf16-mixed pass.
pub struct AutocastOff {
    cuda: i32,
    was: i32,
}

impl AutocastOff {
    pub fn new(device: Device) -> Self {
        let cuda = cuda_flag(device);
        // SAFETY: a plain C call into libtorch's autocast state; it catches exceptions.
        let was = unsafe { ftedit_autocast_set_enabled(cuda, 0) };
        AutocastOff { cuda, was }
    }
}

impl Drop for AutocastOff {
    fn drop(&mut self) {
        if self.was >= 0 {
            // SAFETY: as in `new`; puts back what it found.
            unsafe {
                ftedit_autocast_set_enabled(self.cuda, self.was);
            }
        }
    }
}

/// Whether this CPU multiplies bf16 matrices in hardware (x86: AVX512-BF16 or AMX-BF16;
/// Arm: the BF16 extension). Without it libtorch emulates bf16 products, slower than f32.
pub fn cpu_has_bf16() -> bool {
    cpu_bf16().is_some()
}

/// The flag by which this CPU multiplies bf16 matrices in hardware, the fastest first
/// (`amx_bf16`, `avx512_bf16`, Arm's `bf16`), from `/proc/cpuinfo`.
pub fn cpu_bf16() -> Option<&'static str> {
    static FLAG: OnceLock<Option<&'static str>> = OnceLock::new();
    *FLAG.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        bf16_flag(&info)
    })
}

/// [`cpu_bf16`] of a `/proc/cpuinfo` text.
fn bf16_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    ["amx_bf16", "avx512_bf16", "bf16"]
        .into_iter()
        .find(|f| flags.contains(f))
}

/// Says once on stderr when `precision` asks for bf16 on a CPU that emulates it.
pub fn warn_if_emulated(precision: Precision, device: Device) {
    static SAID: OnceLock<()> = OnceLock::new();
    if precision == Precision::Bf16Mixed && device == Device::Cpu && !cpu_has_bf16() {
        SAID.get_or_init(|| {
            eprintln!(
                "warning: this CPU has no bf16 matrix instructions (AVX512-BF16, AMX or Arm BF16); \
                 bf16-mixed runs slower than f32 here"
            );
        });
    }
}

/// The process's peak resident memory (Linux's `VmHWM`), in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn autocast_off_suspends_autocast_and_puts_it_back() {
        assert!(!autocast_enabled(Device::Cpu));
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let _g = Autocast::bf16(Device::Cpu).unwrap();
        assert!(autocast_enabled(Device::Cpu));
        {
            let _off = AutocastOff::new(Device::Cpu);
            assert!(!autocast_enabled(Device::Cpu));
            assert_eq!(a.matmul(&a).kind(), Kind::Float);
        }
        assert!(autocast_enabled(Device::Cpu));
        assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
    }

    #[test]
    fn op_profile_counts_the_ops_it_saw() {
        let path = std::env::temp_dir().join(format!("ftedit-profile-{}.tsv", std::process::id()));
        // Shapes no other test multiplies: tests run side by side in this process.
        let a = Tensor::ones([7, 13], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([13, 11], (Kind::Float, Device::Cpu));
        let p = OpProfile::start(&path).unwrap();
        for _ in 0..3 {
            let _ = a.mm(&b);
        }
        p.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let row = text
            .lines()
            .find(|l| l.starts_with("aten::mm\t[7,13] [13,11]\t"))
            .unwrap_or_else(|| panic!("no row for the products in\n{text}"));
        let fields: Vec<&str> = row.split('\t').collect();
        assert_eq!(fields[2], "3", "calls in {row}");
        let (self_ms, total_ms): (f64, f64) =
            (fields[3].parse().unwrap(), fields[4].parse().unwrap());
        assert!(self_ms > 0.0 && self_ms <= total_ms, "{row}");
        assert!(
            text.starts_with("# by op\nop\tcalls\tself_ms\ttotal_ms\tself_percent\n"),
            "{text}"
        );
        assert!(
            text.contains("# by op and input shapes\nop\tshapes\tcalls\tself_ms\t"),
            "{text}"
        );
    }

    #[test]
    fn autocast_multiplies_in_bf16_and_restores_f32_after() {
        let a = tch::Tensor::randn([8, 8], (Kind::Float, Device::Cpu));
        {
            let _g = Autocast::bf16(Device::Cpu).unwrap();
            assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
            // Additions are not autocast: they keep f32.
            assert_eq!((&a + &a).kind(), Kind::Float);
            {
                let _inner = Autocast::bf16(Device::Cpu).unwrap();
                assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
            }
            assert_eq!(
                a.matmul(&a).kind(),
                Kind::BFloat16,
                "inner guard kept the outer"
            );
        }
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }

    #[test]
    fn precision_names_round_trip() {
        for p in [Precision::Auto, Precision::F32, Precision::Bf16Mixed] {
            assert_eq!(Precision::parse(p.name()).unwrap(), p);
        }
        assert!(
            Precision::parse("fp8")
                .unwrap_err()
                .to_string()
                .contains("bf16-mixed")
        );
    }

    #[test]
    fn auto_takes_bf16_only_with_matrix_instructions() {
        let amx = "processor : 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n";
        let zen4 = "flags : fpu avx2 avx512f avx512_bf16\n";
        let avx2 = "flags : fpu sse avx2 fma\n";
        assert_eq!(bf16_flag(amx), Some("amx_bf16"));
        assert_eq!(bf16_flag(zen4), Some("avx512_bf16"));
        assert_eq!(bf16_flag(avx2), None);
        assert_eq!(bf16_flag("Features : fp asimd bf16\n"), Some("bf16"));
        // Explicit choices stay; auto follows this machine.
        assert_eq!(Precision::F32.resolve(Device::Cpu).0, Precision::F32);
        assert_eq!(
            Precision::Bf16Mixed.resolve(Device::Cpu).0,
            Precision::Bf16Mixed
        );
        let (p, why) = Precision::Auto.resolve(Device::Cpu);
        assert_eq!(p == Precision::Bf16Mixed, cpu_has_bf16(), "{why}");
        assert!(why.starts_with("auto: "), "{why}");
        assert_eq!(
            Precision::Auto.resolve(Device::Cuda(0)).0,
            Precision::Bf16Mixed
        );
    }
}
