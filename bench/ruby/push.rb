# frozen_string_literal: true

# One push measurement in a fresh process: `ruby bench/ruby/push.rb LIBRARY KIND N`.
#   LIBRARY: rustq | sidekiq
#   KIND:    single (perform_async) | bulk (Client.push_bulk) |
#            perform_later (ActiveJob) | perform_all_later (rustq's enqueue_all) |
#            batch (rustq: the same push_bulk inside a Rustq::Batch's jobs block)
# BENCH_CLIENT_MIDDLEWARE=1 adds one Sidekiq client middleware to the app; BENCH_UNIQUE=1 makes
# the job unique (rustq only).
# Prints {"jobs": N, "seconds": S} on stdout. REDIS_URL names the Redis to push to.
require "json"
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)

library, kind, count = ARGV[0], ARGV[1], Integer(ARGV[2])
WARMUP = 200

active_job = kind.start_with?("perform_")
if active_job
  require_relative "active_job_app"
end

case library
when "rustq"
  $LOAD_PATH.unshift(File.expand_path("../../lib", __dir__))
  require "rustq"
  require "active_job/queue_adapters/rustq_adapter" if active_job
  job_module = Rustq::Job
  client = Rustq::Client
when "sidekiq"
  require "sidekiq"
  job_module = Sidekiq::Job
  client = Sidekiq::Client
else
  abort "unknown library #{library}"
end
ActiveJob::Base.queue_adapter = library.to_sym if active_job

# BENCH_CLIENT_MIDDLEWARE=1: one Sidekiq client middleware (it adds a key) in the app, as apps have
# for request ids; both libraries run it for every push.
if ENV["BENCH_CLIENT_MIDDLEWARE"]
  require "sidekiq"
  tag = Class.new do
    def call(_klass, job, _queue, _pool)
      job["request_id"] = "bench"
      yield
    end
  end
  Object.const_set(:TagMiddleware, tag)
  Sidekiq.configure_client { |config| config.client_middleware { |chain| chain.add TagMiddleware } }
end

job_class = Class.new { define_method(:perform) { |*| } }
Object.const_set(:NoopJob, job_class)
job_class.include(job_module)
# BENCH_UNIQUE=1: a unique job (rustq only): each push takes its lock in the same step.
job_class.rustq_options(unique_for: 600) if ENV["BENCH_UNIQUE"] && library == "rustq"

push = case kind
       when "single"
         ->(n) { n.times { |i| NoopJob.perform_async(i, "bench") } }
       when "bulk"
         # The arguments are built before the clock starts (see `prepared` below).
         ->(args) { client.push_bulk("class" => NoopJob, "args" => args) }
       when "batch"
         abort "batch is rustq's" unless library == "rustq"
         ->(args) { Rustq::Batch.new.jobs { client.push_bulk("class" => NoopJob, "args" => args) } }
       when "perform_later"
         ->(n) { n.times { |i| NoopActiveJob.perform_later(i, "bench") } }
       when "perform_all_later"
         abort "perform_all_later is rustq's" unless library == "rustq"
         ->(n) { Rustq.perform_all_later(Array.new(n) { |i| NoopActiveJob.new(i, "bench") }) }
       else
         abort "unknown kind #{kind}"
       end

# What one call takes: a count, or for a bulk push the jobs' arguments, built untimed.
prepared = ->(n) { %w[bulk batch].include?(kind) ? Array.new(n) { |i| [i, "bench"] } : n }

push.call(prepared.call(WARMUP)) # connections, method caches
input = prepared.call(count)
GC.start
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
push.call(input)
seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
puts JSON.generate("jobs" => count, "seconds" => seconds)
