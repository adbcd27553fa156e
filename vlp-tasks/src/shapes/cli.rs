//! The `vlp shapes …` command line (parsed by clap in the `vlp` binary).
use super::{generate, ShapesConfig, ShapesSummary};
use std::path::PathBuf;
use vlp_core::error::Result;

/// `vlp shapes` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ShapesCommand {
    /// Generate the Shapes data set: images, captions, retrieval splits, VQA, NLVR2, SNLI-VE,
    /// caption references, region features.
    Generate(GenerateArgs),
}

/// Arguments of `vlp shapes generate`. Flags override the configuration file, which overrides
/// the defaults.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Output directory (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// JSON configuration (the fields of `shapes.json`'s `config`; unknown fields rejected).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seed of every random stream.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train images.
    #[arg(long)]
    pub images: Option<usize>,
    /// Validation images.
    #[arg(long)]
    pub val_images: Option<usize>,
    /// Test images.
    #[arg(long)]
    pub test_images: Option<usize>,
    /// Image side, pixels.
    #[arg(long)]
    pub size: Option<u32>,
    /// Most objects per image (≤ 5).
    #[arg(long)]
    pub max_objects: Option<usize>,
    /// Gaussian pixel noise (0–255 units; 0 = none).
    #[arg(long)]
    pub noise: Option<f32>,
    /// Probability of a random light background per image (default 0: all dark).
    #[arg(long)]
    pub light_backgrounds: Option<f64>,
    /// Region feature size.
    #[arg(long)]
    pub region_dim: Option<usize>,
    /// Do not write region features.
    #[arg(long)]
    pub no_regions: bool,
    /// NLVR2 statements per image.
    #[arg(long)]
    pub nlvr2_per_image: Option<usize>,
    /// NLVR2 statements per pair in the train split (half of them true; default 1).
    #[arg(long)]
    pub nlvr2_train_per_pair: Option<usize>,
    /// NLVR2 statement families, comma-separated (some of more, both, exactly_one, neither,
    /// same_count, total, relation; default all).
    #[arg(long, value_delimiter = ',')]
    pub nlvr2_families: Option<Vec<String>>,
}

impl GenerateArgs {
    /// The configuration these arguments describe.
    pub fn config(&self) -> Result<ShapesConfig> {
        let mut cfg = match &self.config {
            Some(p) => ShapesConfig::from_json_file(p)?,
            None => ShapesConfig::default(),
        };
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.images {
            cfg.train_images = v;
        }
        if let Some(v) = self.val_images {
            cfg.val_images = v;
        }
        if let Some(v) = self.test_images {
            cfg.test_images = v;
        }
        if let Some(v) = self.size {
            cfg.image_size = v;
        }
        if let Some(v) = self.max_objects {
            cfg.max_objects = v;
        }
        if let Some(v) = self.noise {
            cfg.noise_std = v;
        }
        if let Some(v) = self.light_backgrounds {
            cfg.light_backgrounds = v;
        }
        if let Some(v) = self.region_dim {
            cfg.region_dim = v;
        }
        if self.no_regions {
            cfg.regions = false;
        }
        if let Some(v) = self.nlvr2_per_image {
            cfg.nlvr2_per_image = v;
        }
        if let Some(v) = self.nlvr2_train_per_pair {
            cfg.nlvr2_train_per_pair = v;
        }
        if let Some(v) = &self.nlvr2_families {
            cfg.nlvr2_families = v.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// One line per split and a total, for the terminal.
pub fn report(s: &ShapesSummary) -> String {
    let mut out = String::new();
    for (name, c) in [("train", &s.train), ("val", &s.val), ("test", &s.test)] {
        out.push_str(&format!(
            "{name:>5}: {} images, {} captions ({:.2} % duplicated), {} VQA, {} NLVR2 ({} true), {} SNLI-VE\n",
            c.images,
            c.captions,
            100.0 * c.duplicate_caption_fraction,
            c.vqa_questions,
            c.nlvr2,
            c.nlvr2_true,
            c.ve
        ));
    }
    out.push_str(&format!(
        "wrote {} files, {:.1} MB, to {} in {:.2} s",
        s.files,
        s.bytes as f64 / 1e6,
        s.out.display(),
        s.seconds
    ));
    out
}

/// Runs a `vlp shapes` subcommand.
pub fn run(cmd: &ShapesCommand) -> Result<()> {
    match cmd {
        ShapesCommand::Generate(args) => {
            let cfg = args.config()?;
            let summary = generate(&cfg, &args.out)?;
            println!("{}", report(&summary));
            Ok(())
        }
    }
}
