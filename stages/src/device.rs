//! Where the model stages compute: `spo-pipe --device cpu|cuda|cuda:N` (`SPO_PIPE_DEVICE`),
//! chosen once per process. Unset (`auto`): CUDA device 0 when this build has CUDA and sees a
//! GPU, else the CPU.
//!
//! The device is not part of a cell's key: a key names what is computed, not where (as the
//! thread count and the CPU's instruction set are not; GPU and CPU results, like AVX-512 and
//! AVX2 ones, differ in the last bits, and each is byte-reproducible on its own kind of
//! machine).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use candle_core::Device;

/// A `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else the CPU.
    Auto,
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let bad = || DeviceError::Unknown(s.to_owned());
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("`{0}` is not a device: use cpu, cuda or cuda:N (N the GPU's index)")]
    Unknown(String),
    #[error(
        "--device {0}: this spo-pipe was built without CUDA (scripts/build-cuda.sh builds one with it)"
    )]
    NoCuda(DeviceChoice),
    #[error("--device {choice}: {message}")]
    Unavailable {
        choice: DeviceChoice,
        message: String,
    },
    #[error("{0} is already set and cannot change within a process")]
    AlreadySet(&'static str),
    #[error(
        "`{0}` is not a memory size: digits with K, M, G or T (e.g. `24G`; plain digits are MiB)"
    )]
    Size(String),
}

static CHOSEN: OnceLock<Device> = OnceLock::new();
static MEMORY_LIMIT: OnceLock<u64> = OnceLock::new();

/// Opens the device `choice` names and makes it the process's compute device; an unusable
/// one is an error here, before any cell runs.
pub fn select_device(choice: DeviceChoice) -> Result<(), DeviceError> {
    CHOSEN
        .set(open(choice)?)
        .map_err(|_| DeviceError::AlreadySet("the compute device"))
}

/// Checks that this build and machine can open the device `choice` names (opened, then let go).
pub fn probe(choice: DeviceChoice) -> Result<(), DeviceError> {
    open(choice).map(drop)
}

/// The compute device as a choice: CUDA device N or the CPU.
pub fn chosen() -> DeviceChoice {
    match device().location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => DeviceChoice::Cuda(gpu_id),
        _ => DeviceChoice::Cpu,
    }
}

fn open(choice: DeviceChoice) -> Result<Device, DeviceError> {
    Ok(match choice {
        DeviceChoice::Auto => auto(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(_) if !cfg!(feature = "cuda") => {
            return Err(DeviceError::NoCuda(choice));
        }
        DeviceChoice::Cuda(n) => Device::new_cuda(n).map_err(|e| DeviceError::Unavailable {
            choice,
            message: e.to_string(),
        })?,
    })
}

fn auto() -> Device {
    Device::cuda_if_available(0).unwrap_or(Device::Cpu)
}

/// The compute device: the one [`select_device`] chose, else `auto`.
pub fn device() -> Device {
    CHOSEN.get().cloned().unwrap_or_else(auto)
}

/// `dev` as a person names it: "the CPU", "CUDA device 1".
pub fn device_name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "the CPU".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("CUDA device {gpu_id}"),
        other => format!("{other:?}"),
    }
}

/// A memory size: digits (a decimal point allowed) with K, M, G or T (binary units); plain
/// digits are MiB, as Slurm reads `--mem`.
pub fn parse_size(s: &str) -> Result<u64, DeviceError> {
    let bad = || DeviceError::Size(s.to_owned());
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'M'),
    };
    let shift = match unit {
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 || num.starts_with('+') {
        return Err(bad());
    }
    Ok((n * (1u64 << shift) as f64) as u64)
}

/// Caps the memory a cell may count on (`--device-memory`), in place of what the device has
/// free: for a GPU shared with other work, or to leave headroom.
pub fn set_memory_limit(bytes: u64) -> Result<(), DeviceError> {
    MEMORY_LIMIT
        .set(bytes)
        .map_err(|_| DeviceError::AlreadySet("the device memory limit"))
}

/// The memory a cell may use on `dev` and where the figure comes from: `--device-memory` when
/// given; else the CPU's `MemAvailable`, or the free memory `nvidia-smi` reports for the GPU
/// (`CUDA_VISIBLE_DEVICES` mapped). `None` when it cannot be told.
pub fn memory_available(dev: &Device) -> Option<(u64, String)> {
    if let Some(&limit) = MEMORY_LIMIT.get() {
        return Some((limit, "--device-memory".into()));
    }
    match dev.location() {
        candle_core::DeviceLocation::Cpu => {
            let info = std::fs::read_to_string("/proc/meminfo").ok()?;
            let kib = mem_available_kib(&info)?;
            Some((kib << 10, "MemAvailable in /proc/meminfo".into()))
        }
        candle_core::DeviceLocation::Cuda { gpu_id } => {
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
            let id = match visible.as_deref() {
                Some(v) if !v.trim().is_empty() => v.split(',').nth(gpu_id)?.trim().to_owned(),
                _ => gpu_id.to_string(),
            };
            let out = std::process::Command::new("nvidia-smi")
                .args([
                    "--query-gpu=memory.free",
                    "--format=csv,noheader,nounits",
                    "-i",
                ])
                .arg(&id)
                .output()
                .ok()?;
            let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            Some((mib << 20, format!("nvidia-smi: free memory of GPU {id}")))
        }
        _ => None,
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in KiB.
fn mem_available_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (s, want) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap(), want);
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", ""] {
            let e = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(e.contains("not a device"), "{bad}: {e}");
        }
    }

    #[test]
    fn memory_sizes_parse_in_binary_units() {
        assert_eq!(parse_size("24G").unwrap(), 24 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("512").unwrap(), 512 << 20);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        for bad in ["", "G", "-1G", "0", "1X", "nanG", "+3G", "1e400G"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains("not a memory size"), "{bad}: {e}");
        }
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let info = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   12345678 kB\n";
        assert_eq!(mem_available_kib(info), Some(12_345_678));
        assert_eq!(mem_available_kib("MemTotal: 1 kB\n"), None);
        let (cpu, source) = memory_available(&Device::Cpu).expect("Linux has /proc/meminfo");
        assert!(cpu > 0 && source.contains("MemAvailable"), "{cpu} {source}");
    }

    #[test]
    fn cuda_on_a_build_without_it_is_refused_up_front() {
        if cfg!(feature = "cuda") {
            return;
        }
        let e = select_device(DeviceChoice::Cuda(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("without CUDA") && e.contains("cuda:1"), "{e}");
        assert!(CHOSEN.get().is_none(), "a refused device is not chosen");
    }
}
