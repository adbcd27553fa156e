//! Embeds the libtorch library directory (found by torch-sys from the project's virtualenv) as an
//! rpath, so binaries, tests, examples and benches run without `LD_LIBRARY_PATH`.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
