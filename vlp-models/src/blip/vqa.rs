//! stub
use super::BlipConfig;
use crate::{Tensors, VlpModel};
use tch::{nn::VarStore, Device};
use vlp_core::{Result, VlpError};

/// stub
#[derive(Debug)]
pub struct BlipVqa {
    vs: VarStore,
}

impl BlipVqa {
    /// stub
    pub fn new(_cfg: &BlipConfig, device: Device) -> Result<Self> {
        Err(VlpError::Unsupported {
            what: "not yet".into(),
        })
        .map(|()| BlipVqa {
            vs: VarStore::new(device),
        })
    }
}

impl VlpModel for BlipVqa {
    fn var_store(&self) -> &VarStore {
        &self.vs
    }
    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }
    fn forward_named(&mut self, _inputs: &Tensors, _extra: &serde_json::Value) -> Result<Tensors> {
        Err(VlpError::Unsupported {
            what: "not yet".into(),
        })
    }
}
