//! `cargo fuzz run gguf`: see fuzz/README.md and `lowbit::fuzz::gguf`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // Errors are the common outcome: capturing a backtrace for each (anyhow does when
        // RUST_BACKTRACE is set) would dominate the run time. Panics still print theirs.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
        // rayon runs on the fuzzing thread itself: parallel loops over tiny inputs would only
        // add thread hand-offs to every execution.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(1).use_current_thread().build_global();
    },
    |data: &[u8]| lowbit::fuzz::gguf(data)
);
