# frozen_string_literal: true

require "logger"

module Rustq
  # Settings for pushing jobs; change them with Rustq.configure.
  #
  #   Rustq.configure do |config|
  #     config.redis_url = "redis://cache.internal:6379/2" # default: REDIS_URL, else localhost
  #     config.wire_version = 7        # 7: Float seconds, read by Sidekiq 6/7/8; 8: Integer ms
  #     config.default_queue = "default"
  #     config.connect_timeout = 1.0   # seconds
  #     config.response_timeout = 5.0  # seconds; nil waits forever
  #     config.ca_file = nil           # PEM of a private CA, for rediss://
  #     config.logger = Rails.logger
  #     config.default_job_options = { "backtrace" => true }
  #   end
  class Configuration
    attr_accessor :redis_url, :wire_version, :connect_timeout, :response_timeout, :ca_file
    attr_writer :logger

    def initialize
      @redis_url = nil
      @wire_version = 7
      @connect_timeout = 1.0
      @response_timeout = 5.0
      @ca_file = nil
      @logger = nil
      # Sidekiq's DEFAULT_WORKER_OPTIONS, in Sidekiq's key order (it shows in every payload).
      @default_job_options = {"retry" => true, "queue" => "default"}.freeze
    end

    # Options merged under every job, like Sidekiq.default_job_options.
    def default_job_options
      @default_job_options
    end

    # Merges into the defaults, as Sidekiq.default_job_options= does.
    def default_job_options=(options)
      @default_job_options = @default_job_options.merge(options.transform_keys(&:to_s)).freeze
    end

    def default_queue
      @default_job_options["queue"]
    end

    def default_queue=(queue)
      self.default_job_options = {"queue" => queue.to_s}
    end

    # The configured logger, else Rails.logger (once Rails has one), else one on $stdout.
    def logger
      @logger || (defined?(::Rails.logger) && ::Rails.logger) || (@stdout_logger ||= Logger.new($stdout, level: Logger::INFO))
    end

    # What the native extension needs; a nil URL means REDIS_URL, else redis://127.0.0.1:6379/0.
    def to_native
      url = redis_url || ENV["REDIS_URL"]
      {
        "url" => (url.nil? || url.strip.empty?) ? nil : url,
        "wire" => Integer(wire_version),
        "connect_timeout" => Float(connect_timeout),
        "response_timeout" => response_timeout && Float(response_timeout),
        "ca_file" => ca_file&.to_s,
        "default_job_options" => default_job_options
      }
    end
  end

  class << self
    def config
      @config ||= Configuration.new
    end

    # Yields the configuration, then applies it: the URL, CA file and wire version are checked
    # now (Rustq::ConfigurationError), and the next push connects with the new settings.
    def configure
      yield config if block_given?
      Native.configure(config.to_native)
      config
    end

    def logger
      config.logger
    end

    def default_job_options
      config.default_job_options
    end

    # True while a rustq worker in this process is shutting down (ActiveJob continuations ask).
    def stopping?
      @stopping == true
    end

    attr_writer :stopping
  end
end
