//! Not a fuzz target: writes the seed corpora to `fuzz/corpus/<target>/` (each file named
//! by its content's SHA-256 prefix, as libFuzzer names its own) and exits. Run the built
//! binary with no arguments from the repository root or from `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn corpus_root() -> std::path::PathBuf {
    let here = std::env::current_dir().expect("a working directory");
    if here.join("fuzz_targets").is_dir() {
        here.join("corpus")
    } else {
        here.join("fuzz").join("corpus")
    }
}

fuzz_target!(
    init: {
        let root = corpus_root();
        let mut count = 0;
        for (target, bytes) in vigil_fuzz::seeds::all() {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("create the corpus directory");
            let name = format!("seed-{}", &vigil_shared::bundle::content_hash(&bytes)[..16]);
            std::fs::write(dir.join(name), &bytes).expect("write a seed");
            count += 1;
        }
        eprintln!("wrote {count} seeds under {}", root.display());
        // Always true; written as a test so that the fuzz loop below stays reachable code.
        if count > 0 {
            std::process::exit(0);
        }
    },
    |_data: &[u8]| {}
);
