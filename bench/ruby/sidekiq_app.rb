# frozen_string_literal: true

# The Sidekiq 6.4.1 side of the benchmark: `sidekiq -r ./bench/ruby/sidekiq_app.rb -c 10 -q default`.
# BENCH_ACTIVE_JOB=1 also loads ActiveJob (Rails' own Sidekiq adapter and its JobWrapper), so
# the plain no-op run does not pay for a library it does not use.
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)
require "sidekiq"
require "logger"

# Same log level as the Rust side's `-l warn`: Sidekiq logs every job's start and end at info.
Sidekiq.logger.level = Logger::WARN

class NoopJob
  include Sidekiq::Job

  def perform(*); end
end

# Pushed with its push time (Float epoch seconds); records start of execution − push time.
class LatencyJob
  include Sidekiq::Job

  def perform(pushed_at)
    started = Time.now.to_f
    Sidekiq.redis { |c| c.rpush("bench:latency", started - pushed_at) }
  end
end

if ENV["BENCH_ACTIVE_JOB"] == "1"
  require_relative "active_job_app"
  ActiveJob::Base.queue_adapter = :sidekiq
end
