# frozen_string_literal: true

require_relative "lib/rustq/version"

Gem::Specification.new do |spec|
  spec.name = "rustq"
  spec.version = Rustq::VERSION
  spec.summary = "Push Sidekiq-compatible jobs from Ruby and Rails through a Rust core"
  spec.description = <<~DESC
    rustq writes Sidekiq's Redis wire format byte for byte: Rustq::Job (a drop-in for
    Sidekiq::Job's client API), Rustq::Client.push/push_bulk, an ActiveJob adapter and test
    modes, with the pushing done by a native extension that releases the GVL while Redis works;
    and `rustq-worker`, which runs the app's own jobs on rustq's Rust engine.
  DESC
  spec.authors = ["rustq contributors"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.1"

  # RubyGems builds ext/rustq with `cargo rustc --locked` inside the installed gem, so the gem
  # carries the whole Cargo workspace it belongs to: the root manifest and lock, and every
  # member's manifest and sources (Cargo loads all members even to build one).
  spec.files = Dir[
    "README.md", "Cargo.toml", "Cargo.lock",
    "lib/**/*.rb", "exe/*",
    "ext/rustq/Cargo.toml", "ext/rustq/src/**/*.rs",
    "crates/*/Cargo.toml", "crates/*/src/**/*", "crates/*/build.rs",
    "tests/Cargo.toml", "tests/src/**/*",
    "bench/latency-worker/Cargo.toml", "bench/latency-worker/src/**/*"
  ].select { |path| File.file?(path) }
  spec.extensions = ["ext/rustq/Cargo.toml"]
  spec.require_paths = ["lib"]
  # `bundle exec rustq-worker` runs the app's own jobs on the rustq engine.
  spec.bindir = "exe"
  spec.executables = ["rustq-worker"]
end
