# frozen_string_literal: true

require "erb"

module Rustq
  # Sidekiq's server-side configuration, for apps that have Sidekiq. `rustq-worker` stands in for
  # `sidekiq`, so what an app registers in `Sidekiq.configure_server` runs here as it would there:
  #
  #   server middleware   around every job, as (job instance, payload Hash, queue)
  #   error_handlers      (exception, {context:, job:, jobstr:}) on every failure
  #   death_handlers      (payload, exception) when a job dies: dead set, retry: false, :discard
  #   on(:startup) ...    :startup, :heartbeat, :beat (7+), :quiet, :shutdown, :exit (7+)
  #   config.redis        the Redis the worker works, unless rustq's own settings name one
  #
  # Sidekiq runs `configure_server` blocks only when `Sidekiq.server?`, which is
  # `defined?(Sidekiq::CLI)`. `sidekiq` loads its CLI before the app; rustq-worker registers
  # `Sidekiq::CLI` (and 7+'s `Sidekiq::Capsule`) as an autoload the moment the app first opens `module Sidekiq` while booting
  # (see .watch), so `server?` is true before anything can call `configure_server`, nothing is
  # loaded that the app does not load itself, and an app without Sidekiq never gets it. It works
  # with Sidekiq 6 (settings on `Sidekiq`) and 7/8 (settings on `Sidekiq.default_configuration`).
  class SidekiqServer
    MODULE_NAME = Module.instance_method(:name)
    private_constant :MODULE_NAME

    # Runs the block (the app's boot) and returns a SidekiqServer if the app loaded Sidekiq,
    # else nil.
    def self.watch(concurrency:)
      server_side = lambda do |mod|
        mod.autoload(:CLI, "sidekiq/cli") unless mod.const_defined?(:CLI, false)
        # 7+: `config.capsule(...)` in configure_server needs Sidekiq::Capsule, which `sidekiq`
        # has loaded (through its CLI) by the time the app's blocks run.
        mod.autoload(:Capsule, "sidekiq/capsule") unless mod.const_defined?(:Capsule, false)
      end
      if defined?(::Sidekiq)
        server_side.call(::Sidekiq)
      else
        trace = TracePoint.new(:class) do |tp|
          # Module#name itself: a class may define a `name` of its own.
          next unless MODULE_NAME.bind_call(tp.self) == "Sidekiq"

          server_side.call(tp.self)
          tp.disable
        end
        trace.enable
      end
      yield
      new(concurrency: concurrency) if defined?(::Sidekiq) && ::Sidekiq.respond_to?(:configure_server)
    ensure
      trace&.disable
    end

    def initialize(concurrency:)
      # Sidekiq 7+: a Config object; 6.5: `Sidekiq[key]`; 6.4 and older: `Sidekiq.options`.
      @config = ::Sidekiq.respond_to?(:default_configuration) ? ::Sidekiq.default_configuration : nil
      @settings = @config || (::Sidekiq.respond_to?(:[]) ? ::Sidekiq : ::Sidekiq.options)
      drop_sidekiqs_own
      # Sidekiq sizes its server-side Redis pool (pushes from inside jobs) from the concurrency.
      @settings[:concurrency] = concurrency
    end

    # The Redis the app's Sidekiq server would use (its `config.redis` in configure_server, else
    # Sidekiq's default from REDIS_URL/REDIS_PROVIDER) as a URL, read from a pooled client without
    # connecting; nil when it cannot be told or carried over (TLS options). A Sentinel config
    # becomes a `redis+sentinel://` URL: the same Sentinels, master name, credentials and db.
    def redis_url
      return unless redis_configured?

      ::Sidekiq.redis do |conn|
        if conn.respond_to?(:_client) && conn._client.respond_to?(:options) # redis-rb 4 (Sidekiq 6)
          options = conn._client.options
          if options[:sentinels]
            sentinels = options[:sentinels].map { |s| s.transform_keys(&:to_sym) } # redis-rb takes either
            next sentinel_url(name: options[:host], db: options[:db], username: options[:username], password: options[:password],
              sentinels: sentinels.map { |s| [s[:host], s[:port]] }, sentinel_password: sentinels.first[:password],
              sentinel_username: sentinels.first[:username])
          end
          url_from(**options.slice(:host, :port, :path, :db, :username, :password, :ssl_params),
            scheme: options[:ssl] || options[:scheme] == "rediss" ? "rediss" : "redis")
        elsif conn.respond_to?(:config) # redis-client (Sidekiq 7+)
          c = conn.config
          if c.respond_to?(:sentinel?) && c.sentinel?
            # Read without asking the Sentinels: `host` would look the master up.
            sentinel = c.sentinels.first
            secret = ->(value) { value.respond_to?(:call) ? value.call(sentinel&.username) : value }
            next sentinel_url(name: c.name, db: c.db, username: c.username, password: secret.call(c.password),
              sentinels: c.sentinels.map { |s| [s.host, s.port] }, sentinel_password: sentinel && secret.call(sentinel.password),
              sentinel_username: sentinel&.username)
          end

          url_from(scheme: c.ssl? ? "rediss" : "redis", host: c.host, port: c.port, path: c.path, db: c.db,
            username: c.username, password: c.password, ssl_params: c.ssl_params)
        end
      end
    rescue StandardError, ScriptError
      nil
    end

    # Sidekiq 7+'s configuration (Sidekiq.default_configuration); nil on 6.x.
    def sidekiq_config
      @config
    end

    # Sidekiq 7+ capsules the app made in configure_server (`config.capsule("single")`) besides
    # the default one. rustq-worker works one set of queues, so theirs would never be worked.
    def extra_capsules
      return [] unless @config.respond_to?(:capsules)

      @config.capsules.keys.map(&:to_s) - ["default"]
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

    # Whether the app gave Sidekiq a Redis (`config.redis = ...`): 7+ keeps it in the config,
    # 6 builds its pool at once.
    def redis_configured?
      if @config
        given = @config.instance_variable_get(:@redis_config)
        given.is_a?(Hash) && !given.empty?
      else
        !::Sidekiq.instance_variable_get(:@redis).nil?
      end
    end

    # A URL the engine's Redis client reads: percent-encoded credentials, IPv6 hosts in
    # brackets, unix sockets as `unix:///abs/path?db=N&user=U&pass=P`.
    # rustq's form of a Sentinel config: redis+sentinel://[user:pass@]s1:port,s2:port/<name>/<db>.
    def sentinel_url(name:, sentinels:, db: nil, username: nil, password: nil, sentinel_password: nil, sentinel_username: nil)
      encode = ->(part) { part && ERB::Util.url_encode(part.to_s) }
      auth = password ? "#{encode.call(username)}:#{encode.call(password)}@" : ""
      hosts = sentinels.map { |host, port| "#{host}:#{port || 26379}" }.join(",")
      sentinel_username = nil if sentinel_username.to_s == "default" # what AUTH <password> means
      query = [sentinel_username && "sentinel_username=#{encode.call(sentinel_username)}",
        sentinel_password && "sentinel_password=#{encode.call(sentinel_password)}"].compact
      "redis+sentinel://#{auth}#{hosts}/#{encode.call(name)}/#{db.to_i}#{"?#{query.join("&")}" unless query.empty?}"
    end

    def url_from(scheme:, host: nil, port: nil, path: nil, db: nil, username: nil, password: nil, ssl_params: nil)
      return if ssl_params && !ssl_params.empty?

      encode = ->(part) { part && ERB::Util.url_encode(part.to_s) }
      user, pass = encode.call(username), encode.call(password)
      if path
        query = ["db=#{db.to_i}", user && "user=#{user}", pass && "pass=#{pass}"].compact.join("&")
        return "unix://#{File.expand_path(path)}?#{query}"
      end
      host = (host || "127.0.0.1").to_s
      host = "[#{host}]" if host.include?(":") && !host.start_with?("[")
      auth = pass ? "#{user}:#{pass}@" : ""
      "#{scheme}://#{auth}#{host}:#{port || 6379}/#{db.to_i}"
    end

    # What Sidekiq 7+'s CLI registers for itself should something load it (execution metrics,
    # which the engine writes already; iterable-job interrupts, which need Sidekiq's processor),
    # and the gem's own Sidekiq-side batch counting.
    def drop_sidekiqs_own
      %w[Sidekiq::Metrics::Middleware Sidekiq::Job::InterruptHandler Rustq::Batch::SidekiqMiddleware].each do |name|
        klass = Object.const_get(name) if Object.const_defined?(name)
        middleware.remove(klass) if klass
      rescue NameError
        nil
      end
      # The gem's batch middleware (above) is for Sidekiq processes: here the engine counts batch
      # jobs itself, atomically with their outcome.
      @settings[:death_handlers].reject! { |handler| handler.class.name == "Rustq::Batch::SidekiqMiddleware::Death" }
      @settings[:lifecycle_events].each_value do |blocks|
        blocks.reject! { |block| block.source_location&.first.to_s.include?("/sidekiq/metrics/") }
      end
    end

    # Sidekiq's chain object; middleware added to it later (`chain.add`) is seen all the same.
    def middleware
      @middleware ||= @config ? @config.server_middleware : ::Sidekiq.server_middleware
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
