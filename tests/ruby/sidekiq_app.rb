# A tiny Sidekiq application (6.4.1, 7.3 or 8.1) for interop tests: `sidekiq -r ./tests/ruby/sidekiq_app.rb`.
# Every job records what it received in the Redis list `results`, so a test can compare.
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)
require "sidekiq"
require "json"

require_relative "sidekiq_fast_poll"

module Interop
  def self.record(jid, klass, args)
    Sidekiq.redis { |c| c.rpush("results", JSON.generate({"jid" => jid, "class" => klass, "args" => args})) }
  end
end

class RecordJob
  include Sidekiq::Worker

  def perform(*args)
    Interop.record(jid, self.class.name, args)
  end
end

module Billing
  class ChargeJob
    include Sidekiq::Worker
    sidekiq_options queue: "critical", retry: 3

    def perform(*args)
      Interop.record(jid, self.class.name, args)
    end
  end
end
