# frozen_string_literal: true

# The demo's limited jobs (bin/demo): `rustq-worker -r ./demo/limits_app.rb -q limits`.
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)
require "json"
require "rustq"

# At most 2 charges at once per account, fleet-wide; the rest wait their turn.
class ChargeJob
  include Rustq::Job
  rustq_options queue: "limits", concurrency: {limit: 2, key: ->(account, *) { "acct:#{account}" }}

  def perform(account, cents)
    start = Time.now.to_f
    sleep 0.2
    Redis.new(url: ENV.fetch("REDIS_URL")).rpush("demo:charges", JSON.generate("account" => account, "cents" => cents, "start" => start, "end" => Time.now.to_f))
  end
end

# The batch's success callback (Sidekiq Pro's shape): runs once, when every charge succeeded.
class ChargesDone
  def on_success(status, options)
    Redis.new(url: ENV.fetch("REDIS_URL")).set("demo:batch", JSON.generate("bid" => status.bid, "total" => status.total, "failures" => status.failures, "options" => options))
  end
end

# One sync per account queued at a time.
class SyncAccountJob
  include Rustq::Job
  rustq_options queue: "limits", unique_for: 600

  def perform(account) = nil
end
