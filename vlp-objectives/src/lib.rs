//! vlp-objectives: pretraining objectives.
