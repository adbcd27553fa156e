//! Prints the module tree of any checkpoint (`.pth`/`.bin`/`.pt`/`.safetensors`): parameter counts
//! per top-level module and the dtypes found — the first thing to look at before porting a model.
//!
//! `cargo run --example inspect_checkpoint -- PATH [DEPTH]`
use std::collections::BTreeMap;
use vlp_core::checkpoint::{read_state_dict, ReadOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: inspect_checkpoint PATH [DEPTH]"))?;
    let depth: usize = args.next().map(|d| d.parse()).transpose()?.unwrap_or(1);
    let sd = read_state_dict(std::path::Path::new(&path), &ReadOptions::default())?;
    let mut groups: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (k, v) in sd.iter() {
        let prefix: Vec<&str> = k.split('.').take(depth).collect();
        let e = groups.entry(prefix.join(".")).or_default();
        e.0 += 1;
        e.1 += v.numel() as i64;
        *kinds.entry(format!("{:?}", v.kind())).or_default() += 1;
    }
    println!("{path}: {} tensors", sd.len());
    for (g, (n, p)) in &groups {
        println!("  {g:<40} {n:>6} tensors {p:>12} values");
    }
    println!("  dtypes: {kinds:?}");
    Ok(())
}
