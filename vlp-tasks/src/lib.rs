//! vlp-tasks: downstream tasks.
