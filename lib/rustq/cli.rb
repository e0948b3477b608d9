# frozen_string_literal: true

require_relative "version"
require_relative "errors"
require_relative "native"
require_relative "job"

module Rustq
  # `rustq-worker`: boots the app (a Rails root's config/environment.rb, or `-r FILE`) and runs
  # the rustq engine in this process. Rust fetches, retries, schedules, beats and shuts down;
  # `-c N` Ruby threads run the jobs (Rustq::Processor). Flags and config file are the
  # standalone binary's, parsed by the same Rust code.
  #
  #   bundle exec rustq-worker -c 5 -q critical,2 -q default
  #   rustq-worker -r ./app.rb -C config/rustq.yml
  #
  # Signals, as Sidekiq: TERM/INT stop (running jobs get `-t` seconds, then go back to their
  # queue), TSTP (and Sidekiq 5's USR1) stops fetching, TTIN logs the running jobs and every
  # thread's backtrace. The names and what they mean come from the engine's one table.
  class CLI
    SIGNALS = Native.signals.to_h.freeze

    # Runs a worker until it is stopped; returns the exit code.
    def self.start(argv = ARGV)
      # `rustq-worker cron list|enqueue|enable|disable NAME`: the standalone binary's command.
      return Native.cron_command(["cron", *argv.drop(1)], new.method(:render_erb).to_proc) if argv.first == "cron"

      new.run(argv)
    end

    def run(argv)
      @worker = Native::Worker.new(["rustq-worker", *argv], method(:render_erb).to_proc, Job::ACTIVE_JOB_WRAPPERS)
      $stdout.sync = true
      @worker.listen
      boot_application
      @processor = Processor.new(sidekiq: @sidekiq, wire_version: @worker.wire_version,
                                 allowed_jobs: @worker.allowed_jobs, allowed_mailers: @worker.allowed_mailers)
      Rustq.stopping = false
      Rustq.stopping_probe = -> { @worker.quiet? || @worker.stopping? }
      @self_read, @self_write = IO.pipe
      trap_signals
      @sidekiq&.fire(:startup)
      @cron = SidekiqCron.start(@sidekiq&.sidekiq_config)
      @worker.start
      # Limiters' slots taken in this process are its own: freed should it die, never by time.
      Limiter.identity = @worker.identity
      start_watchdog
      @beats = 0
      logger.info { "rustq-worker #{VERSION} running #{@worker.concurrency} Ruby threads as #{@worker.identity}" }
      @threads = Array.new(@worker.concurrency) { |i| start_thread(i) }
      watch_engine
      handle_events
      finish(@threads)
      0
    rescue UsageError => e
      (e.status.zero? ? $stdout : $stderr).print(e.message)
      e.status
    rescue Rustq::Error => e
      # The engine could not run at all (a malformed Redis URL, ...). Not `warn`: RUBYOPT=-W0
      # silences it, and a boot that fails must always say why.
      $stderr.puts "rustq-worker: #{e.message}"
      1
    end

    private

    # The config file's ERB, rendered as Sidekiq renders sidekiq.yml (before the app boots).
    def render_erb(text)
      require "erb"
      ERB.new(text).result
    end

    # Sidekiq's rules: a directory (the default: the current one) is a Rails app root whose
    # config/environment.rb boots it; anything else is a Ruby file to require.
    def boot_application
      if (environment = @worker.environment)
        ENV["RAILS_ENV"] = ENV["RACK_ENV"] = environment
      end
      path = @worker.require_path || "."
      rails = File.directory?(path)
      if rails && !File.exist?(File.join(path, "config", "application.rb"))
        raise UsageError, "rustq-worker: #{File.expand_path(path)} is not a Rails app; " \
          "point -r at a Rails app's root or at a Ruby file that loads your job classes\n"
      end
      # Its Sidekiq.configure_server blocks run only in a Sidekiq server: see SidekiqServer.watch.
      require_relative "sidekiq_server"
      require_relative "sidekiq_cron"
      @sidekiq = SidekiqServer.watch(concurrency: @worker.concurrency) do
        if rails
          # config/environment.rb initializes the app: eager loading follows config.eager_load
          # (on in production), and the Railtie sets the ActiveJob adapter up.
          require File.expand_path(File.join(path, "config", "environment.rb"))
        elsif File.exist?(path)
          require File.expand_path(path)
        else
          raise UsageError, "rustq-worker: no such file or directory to require: #{path}\n"
        end
      end
      # An app that does not require rustq itself (a plain -r file) still gets all of it.
      require_relative "../rustq"
      refuse_capsules
      adopt_sidekiqs_redis
    end

    # As for `capsules` in the config file: refused rather than left unworked.
    def refuse_capsules
      capsules = @sidekiq&.extra_capsules
      return if capsules.nil? || capsules.empty?

      raise UsageError, "rustq-worker: #{Native.capsules_refused("Sidekiq capsules (#{capsules.join(", ")}, made in Sidekiq.configure_server)")}\n"
    end

    # Sidekiq's server reads the Redis its configure_server names before REDIS_URL; so does this
    # worker, unless --redis-url or the config file named one.
    def adopt_sidekiqs_redis
      url = @sidekiq&.redis_url or return
      if (redacted = @worker.adopt_redis_url(url))
        logger.info { "rustq-worker: using the Redis of Sidekiq.configure_server: #{redacted}" }
      end
    rescue Rustq::Error => e
      logger.warn { "rustq-worker: cannot use the Redis of Sidekiq.configure_server (#{e.message}); name it with --redis-url" }
    end

    # Like Sidekiq's: trap handlers may not lock anything (not even to log), so they only write
    # the signal's name to a pipe that the main thread reads.
    def trap_signals
      SIGNALS.each_key do |signal|
        trap(signal) { @self_write.write_nonblock("#{signal}\n", exception: false) }
      end
    end

    # systemd's watchdog (WATCHDOG_USEC), pinged from a Ruby thread of its own, as Sidekiq pings
    # it: a VM stuck holding the GVL (a C call that never returns) stops the pings, and systemd
    # restarts the process. (The standalone binary pings from the engine's runtime.)
    def start_watchdog
      interval = @worker.watchdog_interval or return
      Thread.new do
        Thread.current.name = "rustq-watchdog"
        loop do
          sleep interval
          @worker.ping_watchdog
        end
      end
    end

    # The engine's end, waited for without the GVL in a thread of its own, arrives on the same pipe.
    def watch_engine
      Thread.new do
        Thread.current.name = "rustq-engine"
        nil until @worker.wait(60.0)
      rescue Exception => e # rubocop:disable Lint/RescueException
        @engine_error = e
      ensure
        @self_write.write("STOPPED\n")
      end
    end

    # The main thread sleeps on the pipe, where Ruby runs trap handlers at once (inside a native
    # wait it would run them only once the wait ends), and wakes twice a second to stop jobs the
    # engine no longer waits for.
    def handle_events
      loop do
        if IO.select([@self_read], nil, nil, 0.5)
          case (event = @self_read.gets&.chomp)
          when "STOPPED"
            raise @engine_error if @engine_error

            return
          else
            case SIGNALS[event]
            when "stop"
              logger.info { "rustq-worker: SIG#{event}: stopping; running jobs get the shutdown timeout" }
              Rustq.stopping = true
              @worker.signal(event)
            when "quiet"
              logger.info { "rustq-worker: SIG#{event}: quiet, no new jobs" }
              @worker.signal(event)
            when "dump"
              @worker.signal(event)
              dump_threads
            end
          end
        end
        stop_abandoned_jobs
        replace_dead_threads
        fire_sidekiq_events
      end
    end

    # Sidekiq's lifecycle events follow the engine: :heartbeat after its first heartbeat, :beat
    # after each one, :quiet and :shutdown however it was told (a signal or the Web UI).
    def fire_sidekiq_events
      return unless @sidekiq

      beats = @worker.beats
      if beats > @beats
        @beats = beats
        @sidekiq.fire(:heartbeat)
        @sidekiq.fire(:beat)
      end
      stop_cron if @worker.quiet? || @worker.stopping?
      @sidekiq.fire(:quiet) if @worker.quiet?
      @sidekiq.fire(:shutdown) if @worker.stopping?
    end

    # A job that ends its own thread (Thread.exit, Thread#kill) has been failed already (see
    # #run_jobs); a new thread takes its place so the worker keeps its concurrency.
    def replace_dead_threads
      @threads.each_with_index do |thread, index|
        # A thread whose loop ended (the engine stopped handing out jobs) is done, not dead.
        next if thread.alive? || thread[:rustq_done]

        logger.warn { "rustq-worker: thread #{thread.name} ended inside a job; starting a new one" }
        @threads[index] = start_thread(index)
      end
    end

    # Jobs over their time limit (the engine retries them) or past the shutdown timeout (back on
    # their queue) get Rustq::JobTimeout raised in their thread, which then takes the next job.
    def stop_abandoned_jobs
      @worker.stop_abandoned(JobTimeout, "the worker stopped waiting for this job (time limit or shutdown)")
    end

    def start_thread(index)
      Thread.new do
        Thread.current.name = "rustq-#{index}"
        run_jobs
      end
    end

    # One Ruby thread: take a job, run it, answer; until the engine has stopped. The loop is the
    # engine's (Native::Worker#run_jobs): between jobs it runs no Ruby code, so Rustq::JobTimeout
    # can only interrupt a job (see Processor#process).
    def run_jobs
      @worker.run_jobs(@processor, self)
      Thread.current[:rustq_done] = true
    end

    # A Rustq::JobTimeout raised just as its job ended (run_jobs calls this then, until the raise
    # is done): let it fire here, not in the next job. Thread.pass lets the raising thread finish.
    def discard_late_timeout
      Thread.handle_interrupt(JobTimeout => :immediate) { Thread.pass }
    rescue JobTimeout
      nil
    end

    def stop_cron
      @cron&.stop
      @cron = nil
    end

    # The engine has stopped and pushed back what did not finish: threads still running a job get
    # Rustq::JobTimeout (their job is back on its queue), then end like the idle ones; a thread
    # whose job ignores it is killed.
    def finish(threads)
      # Sidekiq's events fire once each: here when the engine stopped without a signal.
      stop_cron
      @sidekiq&.fire(:quiet)
      @sidekiq&.fire(:shutdown)
      stop_abandoned_jobs
      threads.each { |thread| thread.join(2) || thread.kill }
      @sidekiq&.fire(:exit)
      logger.info { "rustq-worker stopped" }
    end

    def dump_threads
      Thread.list.each do |thread|
        logger.info { "thread #{thread.name || thread.object_id} (#{thread.status}):\n#{Array(thread.backtrace).join("\n")}" }
      end
    end

    def logger
      Rustq.logger
    end
  end
end
