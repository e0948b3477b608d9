# frozen_string_literal: true

# Every run starts its own redis-server on a free loopback port (Sidekiq's keys have no
# namespace, so specs never share a Redis with anything) and stops it at the end.
require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)
require "json"

require_relative "support/redis_server"
REDIS_SERVER = RedisServer.start
ENV["REDIS_URL"] = REDIS_SERVER.url

# Rails loads ActiveJob before an app's gems; do the same so the adapter registers itself.
require "active_job"
require "rustq"

ActiveJob::Base.logger = Logger.new(nil)
Rustq.configure { |config| config.logger = Logger.new(nil) }

require_relative "support/sidekiq_process"

module RedisHelpers
  # A plain redis-rb connection to the private server, to look at what rustq wrote.
  def redis
    @redis ||= Redis.new(url: REDIS_SERVER.url)
  end

  def queue_payloads(queue = "default")
    redis.lrange("queue:#{queue}", 0, -1).reverse.map { |json| JSON.parse(json) }
  end

  def scheduled
    redis.zrange("schedule", 0, -1, with_scores: true).map { |json, score| [JSON.parse(json), score] }
  end
end

# For specs that reconfigure the gem: each example gets a copy of the settings, restored after.
RSpec.shared_context "restores Rustq.config" do
  around do |example|
    saved = Rustq.config
    Rustq.instance_variable_set(:@config, saved.dup)
    example.run
  ensure
    Rustq.instance_variable_set(:@config, saved)
    Rustq.configure
  end
end

RSpec.configure do |config|
  config.include RedisHelpers
  config.disable_monkey_patching!
  config.order = :random
  config.before { redis.flushdb }
  # rustq/testing (like sidekiq/testing) turns fake mode on when required; specs push for real
  # unless they pick a mode themselves.
  config.before { Rustq::Testing.disable! if defined?(Rustq::Testing) }
  config.after(:suite) { REDIS_SERVER.stop }
end
