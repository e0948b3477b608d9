# frozen_string_literal: true

# The Ruby host's side of tests/tests/batches.rs: `rustq-worker -r ./tests/ruby/batch_app.rb`. Its
# jobs do what rustq-test-worker's Rust ones of the same name do; its Report receives the batch
# callbacks the gem's Rustq::Batch::Callback runs here, and records them in the Redis list
# "callbacks" as the Rust worker records the callback jobs it runs.
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)
require "json"
require "rustq"

module BatchLedger
  def self.redis
    Thread.current[:batch_redis] ||= Redis.new(url: ENV.fetch("REDIS_URL"))
  end
end

class SlowJob
  include Rustq::Job

  def perform(ms)
    sleep(ms / 1000.0)
    BatchLedger.redis.incr("ruby_ran")
  end
end

# Fails the first time it runs here (the Rust one: the first time it runs at all).
class FailOnceJob
  include Rustq::Job

  def perform(_n)
    raise "first run fails" if BatchLedger.redis.set("failed_once:#{jid}", "1", nx: true)
  end
end

class FailJob
  include Rustq::Job

  def perform(*)
    raise "boom"
  end
end

class Report
  def on_complete(status, options) = record("complete", status, "Report", options)
  def done(status, options) = record("success", status, "Report#done", options)
  def dead(status, options) = record("death", status, "Report#dead", options)

  private

  def record(event, status, target, options)
    BatchLedger.redis.rpush("callbacks", JSON.generate("args" => [event, status.bid, target, options], "host" => "ruby"))
  end
end
