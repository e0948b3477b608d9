# frozen_string_literal: true

# The rustq side of the Ruby-job benchmarks: `rustq-worker -r ./bench/ruby/rustq_app.rb` (the gem's
# Ruby host). Same classes as sidekiq_app.rb.
require "rustq"

class NoopJob
  include Rustq::Job

  def perform(*); end
end

if ENV["BENCH_ACTIVE_JOB"] == "1"
  require_relative "active_job_app"
  require "active_job/queue_adapters/rustq_adapter"
  ActiveJob::Base.queue_adapter = :rustq
end
