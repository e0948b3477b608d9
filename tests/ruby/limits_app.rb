# frozen_string_literal: true

# The Ruby host's side of tests/tests/limits.rs: `rustq-worker -r ./tests/ruby/limits_app.rb`.
# LimitedJob does what rustq-test-worker's Rust LimitedJob does: sleeps, then records when it ran
# in the Redis list "limited_runs" (times in ms).
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)
require "json"
require "rustq"

module LimitsLedger
  def self.redis
    Thread.current[:limits_redis] ||= Redis.new(url: ENV.fetch("REDIS_URL"))
  end

  def self.now_ms = (Process.clock_gettime(Process::CLOCK_REALTIME) * 1000).to_i
end

class LimitedJob
  include Rustq::Job

  def perform(key, ms)
    start = LimitsLedger.now_ms
    sleep(ms / 1000.0)
    LimitsLedger.redis.rpush("limited_runs", JSON.generate("jid" => jid, "key" => key, "start" => start, "end" => LimitsLedger.now_ms, "host" => "ruby"))
  end
end
