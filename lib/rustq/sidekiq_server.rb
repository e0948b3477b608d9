# frozen_string_literal: true

module Rustq
  # Sidekiq's server-side configuration, for apps that have Sidekiq. `rustq-worker` stands in for
  # `sidekiq`, so what an app registers in `Sidekiq.configure_server` runs here as it would there:
  #
  #   server middleware   around every job, as (job instance, payload Hash, queue)
  #   error_handlers      (exception, {context:, job:, jobstr:}) on every failure
  #   death_handlers      (payload, exception) when a job dies: dead set, retry: false, :discard
  #   on(:startup) ...    :startup, :heartbeat, :quiet, :shutdown and (Sidekiq 7+) :exit
  #
  # Sidekiq runs `configure_server` blocks only when `Sidekiq.server?`, which is
  # `defined?(Sidekiq::CLI)`. `sidekiq` loads its CLI before the app; rustq-worker loads it the
  # moment the app itself has loaded Sidekiq while booting (see .watch), so an app without
  # Sidekiq never gets it, whatever is installed. It works with Sidekiq 6 (settings on `Sidekiq`)
  # and 7/8 (settings on `Sidekiq.default_configuration`).
  class SidekiqServer
    class << self
      # Runs the block (the app's boot, whose own `require` of the app is the first one seen)
      # and returns a SidekiqServer if the app loaded Sidekiq, else nil. Sidekiq's CLI is loaded
      # right after the outermost `require` that brought Sidekiq in returns, before the app's
      # next line (its `Sidekiq.configure_server` call) runs.
      def watch(concurrency:)
        @concurrency = concurrency
        @server = nil
        @started = false
        @depth = -1
        [::Kernel, ::Kernel.singleton_class].each { |mod| mod.prepend(RequireWatch) unless mod <= RequireWatch }
        @watching = true
        start if defined?(::Sidekiq::VERSION)
        yield
        @watching = false
        # Loaded some other way (load, require_relative): too late for configure_server blocks
        # that already ran, but middleware added later and the handlers still work.
        start if defined?(::Sidekiq::VERSION)
        @server
      ensure
        @watching = false
      end

      def watching?
        @watching
      end

      def entered
        @depth += 1
      end

      def left
        @depth -= 1
        start if @depth.zero? && defined?(::Sidekiq::VERSION)
      end

      private

      def start
        return if @started

        @started = true
        require "sidekiq/cli"
        @server = new(concurrency: @concurrency)
      rescue LoadError, StandardError => e
        Rustq.logger.warn { "rustq-worker: Sidekiq's server side did not load (#{e.class}: #{e.message}); Sidekiq.configure_server blocks will not run" }
      end
    end

    # Counts nested requires while the app boots (see SidekiqServer.watch).
    module RequireWatch
      def require(path)
        return super unless SidekiqServer.watching?

        SidekiqServer.entered
        begin
          super
        ensure
          SidekiqServer.left
        end
      end
    end

    def initialize(concurrency:)
      # Sidekiq 7+: a Config object; 6.5: `Sidekiq[key]`; 6.4 and older: `Sidekiq.options`.
      @config = ::Sidekiq.respond_to?(:default_configuration) ? ::Sidekiq.default_configuration : nil
      @settings = @config || (::Sidekiq.respond_to?(:[]) ? ::Sidekiq : ::Sidekiq.options)
      # What Sidekiq 7+ registers for itself when its CLI loads (execution metrics, which the
      # engine writes already; iterable-job interrupts): the app's own configuration starts empty.
      middleware.clear
      @settings[:lifecycle_events].each_value(&:clear)
      # Sidekiq sizes its server-side Redis pool (pushes from inside jobs) from the concurrency.
      @settings[:concurrency] = concurrency
    end

    # Whether the app added server middleware.
    def middleware?
      !middleware.empty?
    end

    # Runs the block inside the server middleware chain. A middleware that does not yield skips
    # the job, which then counts as done (Sidekiq's rule).
    def around(instance, payload, queue, &block)
      middleware.invoke(instance, payload, queue, &block)
    end

    # A job failed.
    def job_failed(error, payload, json)
      notify(error, context: "Job raised exception", job: payload, jobstr: json)
    end

    # A job died: it goes to the dead set, or had retry: false, or was discarded.
    def job_died(payload, error)
      @settings[:death_handlers].each do |handler|
        handler.call(payload, error)
      rescue => e
        notify(e, context: "Error calling death handler", job: payload)
      end
    end

    # Sidekiq's lifecycle events, in order (reverse for :quiet, :shutdown and :exit, as
    # Sidekiq): each block once, but :beat's at every heartbeat. A :startup block that raises
    # stops the worker from starting.
    def fire(event)
      blocks = @settings[:lifecycle_events][event]
      return if blocks.nil? || blocks.empty?

      blocks = blocks.reverse if %i[quiet shutdown exit].include?(event)
      blocks.each do |block|
        block.call
      rescue => e
        Rustq.logger.error { "Sidekiq #{event} event failed: #{e.class}: #{e.message}" }
        notify(e, context: "Exception during Sidekiq lifecycle event.", event: event)
        raise if event == :startup
      end
      @settings[:lifecycle_events][event].clear unless event == :beat
    end

    private

    def middleware
      @config ? @config.server_middleware : ::Sidekiq.server_middleware
    end

    # Every error handler but Sidekiq's default one, which only logs (rustq logs failures itself).
    # Sidekiq 7+ passes its config as a third argument to handlers that take one.
    def notify(error, context)
      @settings[:error_handlers].each do |handler|
        next if default_handler?(handler)

        if @config && arity(handler) != 2
          handler.call(error, context, @config)
        else
          handler.call(error, context)
        end
      rescue Exception => e # rubocop:disable Lint/RescueException
        Rustq.logger.error { "!!! ERROR HANDLER THREW AN ERROR !!! #{e.class}: #{e.message}" }
      end
    end

    def arity(handler)
      handler.respond_to?(:arity) ? handler.arity : handler.method(:call).arity
    end

    # Sidekiq's own logging handler: 6.4's Logger, 6.5's DEFAULT_ERROR_HANDLER, 7+'s ERROR_HANDLER.
    def default_handler?(handler)
      (defined?(::Sidekiq::ExceptionHandler::Logger) && handler.is_a?(::Sidekiq::ExceptionHandler::Logger)) ||
        (defined?(::Sidekiq::DEFAULT_ERROR_HANDLER) && handler == ::Sidekiq::DEFAULT_ERROR_HANDLER) ||
        (defined?(::Sidekiq::Config::ERROR_HANDLER) && handler.equal?(::Sidekiq::Config::ERROR_HANDLER))
    end
  end
end
