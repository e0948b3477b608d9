//! `rustq-worker`: a Sidekiq-compatible job server. On its own it runs the handlers its config
//! file declares (`exec` programs, `noop`); Rust applications call `rustq_engine::cli::main`
//! with their own registry to run Rust handlers with the same command line.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rustq_engine::cli::main(rustq_engine::Registry::new())
}
