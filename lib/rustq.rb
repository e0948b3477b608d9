# frozen_string_literal: true

# rustq: Sidekiq-compatible job pushing from Ruby through a Rust core.
#
#   require "rustq"
#   Rustq.configure { |c| c.redis_url = ENV["REDIS_URL"] }
#   class HardJob
#     include Rustq::Job
#   end
#   HardJob.perform_async(1, "two")
#
# Errors: Rustq::InvalidJob (an ArgumentError) for pushes Sidekiq would refuse; Rustq::Error and
# its subclasses ConfigurationError, ConnectionError and CommandError for everything else.

require "json"
require_relative "rustq/version"
require_relative "rustq/errors"

require_relative "rustq/native"

module Rustq
  # The native extension's methods: used by this library only.
  private_constant :Native
end

require_relative "rustq/configuration"
require_relative "rustq/trace_context"
require_relative "rustq/instrumentation"
require_relative "rustq/client_middleware"
require_relative "rustq/limits"
require_relative "rustq/limiter"
require_relative "rustq/active_job_limits"
require_relative "rustq/client"
require_relative "rustq/cron"
require_relative "rustq/job"
require_relative "rustq/batch"
require_relative "rustq/batch_sidekiq"
require_relative "rustq/processor"

# The ActiveJob adapter must exist before `queue_adapter = :rustq` is looked up: now if ActiveJob
# is already loaded (Rails loads it before the app's gems), else as soon as it loads.
if defined?(::ActiveJob)
  require "active_job/queue_adapters/rustq_adapter"
elsif defined?(::ActiveSupport) && ::ActiveSupport.respond_to?(:on_load)
  ::ActiveSupport.on_load(:active_job) { require "active_job/queue_adapters/rustq_adapter" }
else
  # Neither is loaded yet (a plain Ruby app that requires rustq first): the moment ActiveJob
  # opens its adapters' namespace, `:rustq` becomes one of its autoloads, as its own adapters are.
  module Rustq
    ADAPTER_HOOK = TracePoint.new(:class) do |tp|
      next unless tp.self.is_a?(Module) && tp.self.name == "ActiveJob::QueueAdapters"

      tp.self.autoload(:RustqAdapter, File.expand_path("active_job/queue_adapters/rustq_adapter", __dir__))
      tp.disable
    end
    private_constant :ADAPTER_HOOK
  end
  Rustq.const_get(:ADAPTER_HOOK).enable
end
require_relative "rustq/railtie" if defined?(::Rails::Railtie)
