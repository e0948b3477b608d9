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
  #     config.spin_wait = :auto       # seconds a push spins for Redis's reply before it
  #                                    # sleeps (at most 0.001); 0 or nil: never (see below)
  #     config.logger = Rails.logger
  #     config.default_job_options = { "backtrace" => true }
  #   end
  class Configuration
    attr_accessor :redis_url, :wire_version, :connect_timeout, :response_timeout, :ca_file, :spin_wait
    attr_writer :logger

    def initialize
      @redis_url = nil
      @wire_version = 7
      @connect_timeout = 1.0
      @response_timeout = 5.0
      @ca_file = nil
      # How long a single push (perform_async, perform_later, Client.push) busy-waits for
      # Redis's reply before its thread sleeps. A thread that sleeps is woken only as its CPU
      # leaves idle, which on a virtual machine took longer than the round trip to a Redis on
      # the same machine: 95-150 us per push asleep, 30-60 us spinning, at the same CPU time.
      # :auto spins up to 0.0002 s for a Redis on this machine (loopback address or unix
      # socket) and not at all for one elsewhere, whose round trip a spin would mostly spend
      # burning CPU. Only a thread pushing alone spins (no other push waiting, none begun by
      # another thread in the last millisecond): while threads push side by side the CPUs are
      # busy and sleeping costs little. After a reply missed while spinning, a thread stops
      # spinning for its next 1, 2, 4 ... 1,024 pushes. Bulk pushes never spin. Set 0 where CPU
      # is scarcer than latency (tight CPU quotas), or e.g. 0.0003 for a Redis a network hop
      # away.
      @spin_wait = :auto
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
        **(spin_wait == :auto ? {} : {"spin_wait" => spin_wait && Float(spin_wait)}),
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

    # True once the rustq worker in this process quiets or stops, however it was told (a signal
    # or the Web UI), as Sidekiq's `stopping?`: ActiveJob continuations and Sidekiq's iterable
    # jobs ask it between steps, so they stop early and resume later.
    def stopping?
      @stopping == true || @stopping_probe&.call == true
    end

    attr_writer :stopping

    # rustq-worker sets a probe that asks the engine (quiet or stopping).
    attr_writer :stopping_probe
  end
end
