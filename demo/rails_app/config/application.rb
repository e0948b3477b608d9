# frozen_string_literal: true

# A small Rails app whose ActiveJob adapter is rustq: `bundle exec rustq-worker` in its root runs
# its jobs; Sidekiq is in the Gemfile too, for its API (and any Sidekiq::Job classes).
require "rails"
require "active_job/railtie"
require "sidekiq"
require "rustq"

module Shop
  class Application < Rails::Application
    config.load_defaults 6.1
    config.root = File.expand_path("..", __dir__)
    config.eager_load = false
    config.logger = Logger.new($stdout)
    config.log_level = :warn
    config.secret_key_base = "0" * 64
    config.active_job.queue_adapter = :rustq
  end
end
