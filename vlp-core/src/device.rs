//! Device selection: CUDA when available unless overridden (`cpu`, `cuda`, `cuda:N`).
use crate::{Result, VlpError};
use tch::Device;

/// Parses a device name (`auto`, `cpu`, `cuda`, `cuda:N`); `auto` = `Device::cuda_if_available()`.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "" | "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(VlpError::Msg(format!(
                "unknown device `{name}`: expected auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

fn cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count() as usize;
    if i < n {
        Ok(Device::Cuda(i))
    } else {
        Err(VlpError::Msg(format!(
            "device cuda:{i} requested but {n} CUDA device(s) are available"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("auto").unwrap(), Device::cuda_if_available());
        assert!(parse_device("tpu").is_err());
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").is_err());
        }
    }
}
