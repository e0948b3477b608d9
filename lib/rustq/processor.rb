# frozen_string_literal: true

require "json"
require_relative "errors"

module Rustq
  # Runs one job the rustq-worker engine fetched, in this Ruby process, and says how it went.
  # The engine (Rust) decides what a failure means for the job — retry set, dead set or gone —
  # from the answer #process gives:
  #
  #   nil                                    success
  #   {"error_class" => "RuntimeError",      failure: Sidekiq's error_class / error_message /
  #    "message" => "boom",                  error_backtrace (kept when the payload's
  #    "backtrace" => [lines],               `backtrace` option asks), and when to retry:
  #    "retry_in" => 30 | "kill" | "discard" | nil}   nil = Sidekiq's backoff
  #
  # Only job classes run: classes including Rustq::Job or Sidekiq::Job/Sidekiq::Worker, and
  # ActiveJob jobs behind Sidekiq's wrapper class names. Any other constant (`Kernel`, `File`, a
  # model) fails with Rustq::NotAJobClass and goes to the dead set, never called; an unknown
  # class is Sidekiq's NameError failure (retried, then dead).
  class Processor
    # What Sidekiq's JobRetry writes when an exception's message itself raises.
    UNREADABLE_MESSAGE = "!!! ERROR MESSAGE THREW AN ERROR !!!"

    # Rustq::JobTimeout never interrupts the failure handling (see #process).
    UNINTERRUPTIBLE = { JobTimeout => :never }.freeze

    # Runs `payload` (a parsed job) in this thread, without any checks of Redis or retries:
    # what Rustq::Testing's inline mode and #process share.
    def self.execute(payload, klass = job_class(payload), job = nil)
      return run_active_job(payload) if klass == :active_job

      job ||= instance(payload, klass)
      job.perform(*payload["args"])
    end

    # A new instance of the job class, with its jid; for ActiveJob, of the wrapper class the
    # payload names (what Sidekiq's server middleware is given), or a plain Object when that
    # class is not loaded.
    def self.instance(payload, klass)
      if klass == :active_job
        wrapper = begin
          Object.const_get(payload["class"])
        rescue NameError
          nil
        end
        job = wrapper.is_a?(Class) ? wrapper.new : Object.new
      else
        job = klass.new
      end
      job.jid = payload["jid"] if job.respond_to?(:jid=)
      job.bid = payload["bid"] if job.respond_to?(:bid=)
      # Sidekiq 7.3+ jobs ask their processor `_context.stopping?` (`interrupted?`, which
      # Sidekiq::IterableJob checks between iterations).
      job._context = STOPPING if job.respond_to?(:_context=)
      job
    end

    # What a job's `_context` answers: whether this process quiets or stops.
    STOPPING = Object.new
    def STOPPING.stopping? = Rustq.stopping?
    STOPPING.freeze

    # The class to run for `payload`, :active_job for an ActiveJob wrapper, or an error. Decided
    # by the class the name resolves to, not by how it is spelled: `Object::ActiveJob::...::
    # JobWrapper` is the wrapper too, and takes the ActiveJob path, whose job_class is checked.
    def self.job_class(payload)
      name = payload["class"]
      return :active_job if Job::ACTIVE_JOB_WRAPPERS.include?(name)

      klass = Object.const_get(name.to_s)
      return :active_job if active_job_wrapper?(klass)
      return klass if job_class?(klass)

      raise NotAJobClass, "#{name} is not a job class: include Rustq::Job or Sidekiq::Job"
    end

    # Whether `klass` is one of the ActiveJob adapters' wrapper classes: by its own name, which
    # is the same however the payload spelled it.
    def self.active_job_wrapper?(klass)
      klass.is_a?(Class) && Job::ACTIVE_JOB_WRAPPERS.include?(klass.name)
    end

    def self.job_class?(klass)
      return false unless klass.is_a?(Class)

      klass.include?(Rustq::Job) || (defined?(::Sidekiq::Worker) && klass.include?(::Sidekiq::Worker)) || false
    end

    # ActiveJob's own entry point, as Rails' Sidekiq adapter calls it: retry_on, discard_on and
    # callbacks behave as under Sidekiq. `job_class` is checked first: execute would call `new`
    # on whatever it names.
    def self.run_active_job(payload)
      args = payload["args"]
      run_active_job_data(args.is_a?(Array) ? args.first : nil, payload["jid"], payload["class"])
    end

    # The same, given the payload's parts: `data` (its args[0]), its jid and its wrapper class.
    def self.run_active_job_data(data, jid, wrapper)
      name = data["job_class"] if data.is_a?(Hash)
      active_job_class!(name, wrapper) unless ACTIVE_JOB_CLASSES[name]
      mail_delivery!(name, data) if name.end_with?("DeliveryJob")

      # Sidekiq's JobWrapper passes `data.merge("provider_job_id" => jid)`; setting it in place
      # and putting it back after saves copying the Hash per job, and middleware and handlers
      # still see the payload as stored.
      return ::ActiveJob::Base.execute(data.merge("provider_job_id" => jid)) if data.frozen?

      stored = data.fetch("provider_job_id", NOT_SET)
      data["provider_job_id"] = jid
      begin
        ::ActiveJob::Base.execute(data)
      ensure
        stored.equal?(NOT_SET) ? data.delete("provider_job_id") : data["provider_job_id"] = stored
      end
    end

    # Names found to be ActiveJob classes. A class stays one (code reloading makes a new class of
    # the same kind), so each name is looked up once per process, not once per job.
    ACTIVE_JOB_CLASSES = {}
    private_constant :ACTIVE_JOB_CLASSES

    def self.active_job_class!(name, wrapper)
      klass = name && Object.const_get(name.to_s)
      unless defined?(::ActiveJob::Base) && klass.is_a?(Class) && klass < ::ActiveJob::Base
        raise NotAJobClass, "#{name.inspect} (wrapped by #{wrapper}) is not an ActiveJob class"
      end

      # Only a class's own name is remembered: endless spellings of it (`Object::…`) would grow
      # the cache for good.
      ACTIVE_JOB_CLASSES[name] = true if klass.name == name
    end
    private_class_method :active_job_class!
    NOT_SET = Object.new.freeze
    private_constant :NOT_SET

    # ActionMailer's delivery jobs call `mailer.constantize.public_send(mail_method, *args)` and
    # `message.send(delivery_method)`: with Redis write access, `["Kernel", "system", ...]` runs a
    # shell command (under Sidekiq too). Before one runs: its mailer must be a mailer class (one of
    # `allowed_mailers` when the config names them), its method one of the mailer's actions, its
    # delivery `deliver_now` or `deliver_now!`.
    MAIL_DELIVERY_JOBS = %w[ActionMailer::MailDeliveryJob ActionMailer::DeliveryJob].freeze

    def self.mail_delivery!(name, data, allowed_mailers = nil)
      return unless MAIL_DELIVERY_JOBS.include?(Object.const_get(name.to_s).name)

      mailer, mail_method, delivery = Array(data["arguments"])
      if allowed_mailers && !allowed_mailers.include?(mailer)
        raise NotAJobClass, "#{mailer.inspect} is not in allowed_mailers (#{name})"
      end

      klass = begin
        Object.const_get(mailer.to_s)
      rescue NameError
        nil
      end
      unless defined?(::ActionMailer::Base) && klass.is_a?(Class) && klass < ::ActionMailer::Base &&
             klass.action_methods.include?(mail_method.to_s) && %w[deliver_now deliver_now!].include?(delivery.to_s)
        raise NotAJobClass, "#{name} may only deliver a mailer's action (not #{mailer.inspect}.#{mail_method}, #{delivery})"
      end
    end

    # The allowlists of the config file (`allowed_jobs`, `allowed_mailers`), checked by name
    # before anything is looked up: nil allows every class.
    def allowed!(payload_class, data)
      return unless @allowed_jobs || @allowed_mailers

      name = Job::ACTIVE_JOB_WRAPPERS.include?(payload_class) && data.is_a?(Hash) ? data["job_class"] : payload_class
      if @allowed_jobs && !allowed_job?(name.to_s)
        raise NotAJobClass, "#{name} is not in allowed_jobs"
      end
      self.class.mail_delivery!(name.to_s, data, @allowed_mailers) if data.is_a?(Hash) && name.to_s.end_with?("DeliveryJob")
    end

    def allowed_job?(name)
      @allowed_jobs.any? { |allowed| allowed == name || (allowed.end_with?("::*") && name.start_with?(allowed[0..-2])) }
    end
    private :allowed!, :allowed_job?

    # `sidekiq`: a Rustq::SidekiqServer when the app has Sidekiq (its server middleware, error
    # and death handlers then run as under Sidekiq).
    # `wire_version`: how the engine writes timestamps (7: Float seconds, 8: Integer ms), so the
    # hooks see the payload as it will be stored.
    # `allowed_jobs`, `allowed_mailers`: the config file's allowlists (nil: all allowed).
    def initialize(logger: Rustq.logger, sidekiq: nil, wire_version: 7, allowed_jobs: nil, allowed_mailers: nil)
      @logger = logger
      @sidekiq = sidekiq
      @wire_version = wire_version
      @allowed_jobs = allowed_jobs
      @allowed_mailers = allowed_mailers
      app = defined?(::Rails) && ::Rails.respond_to?(:application) && ::Rails.application
      @reloader = app.reloader if app.respond_to?(:reloader)
    end

    # Runs the job `job` fetched from `queue`: a Hash as JSON.parse makes it (what the engine
    # hands over) or the payload's JSON text. `outlook` is what the engine will do with a
    # failure: "retry", "exhausted" (dead set) or "no_retry". `source` gives the payload's JSON
    # as stored, for error handlers: a String, or anything whose #payload_json does (the
    # engine's, asked only when a job fails). Returns nil or a failure Hash.
    # Rustq::JobTimeout (the worker gave up on the job) may interrupt the job, never the failure
    # handling after it; rustq-worker raises it only while this runs (Native::Worker#run_jobs).
    def process(job, queue, outlook, source = job)
      payload = job.is_a?(String) ? JSON.parse(job) : job
      klass = nil
      allowed!(payload["class"], payload["args"].is_a?(Array) ? payload["args"].first : nil)
      TraceContext.around(source.equal?(job) ? payload : source) do
        Instrumentation.instrument("perform.rustq", event_fields(payload, queue)) do
          # Like Sidekiq: each job inside the Rails reloader (which wraps the executor), so code
          # reloads between jobs in development and database connections go back to the pool.
          if @reloader
            @reloader.wrap { run(payload, queue, klass = self.class.job_class(payload)) }
          else
            run(payload, queue, klass = self.class.job_class(payload))
          end
        end
      end
      nil
    # Everything a job raises fails that job only, `exit` and `abort` (SystemExit) included,
    # but for Sidekiq's two ways of saying a job is not over (see #interrupted).
    rescue Exception => e # rubocop:disable Lint/RescueException
      return interrupted(e, payload) if interrupted?(e)
      return over_limit(e, payload) if e.is_a?(OverLimit)

      Thread.handle_interrupt(UNINTERRUPTIBLE) { failure(payload || {}, klass, e, outlook, queue, source) }
    end

    def interrupted?(error)
      (defined?(::Sidekiq::Job::Interrupted) && error.is_a?(::Sidekiq::Job::Interrupted)) ||
        (defined?(::Sidekiq::JobRetry::Skip) && error.is_a?(::Sidekiq::JobRetry::Skip))
    end

    # The answer for a job that stopped without failing (#interrupted?):
    # - Sidekiq::Job::Interrupted (7.3+): an iterable job stopped between iterations because the
    #   process quiets or stops (or it ran past `max_iteration_runtime`), its cursor saved. It goes
    #   to the back of its queue unchanged (where Sidekiq's InterruptHandler pushes it), in the
    #   step that acknowledges it: no retry, no failure.
    # - Sidekiq::JobRetry::Skip: server middleware (Sidekiq's own InterruptHandler, which pushed
    #   the job again) has dealt with it: done.
    def interrupted(error, payload)
      return nil unless defined?(::Sidekiq::Job::Interrupted) && error.is_a?(::Sidekiq::Job::Interrupted)

      @logger.info { "#{payload["class"]} JID-#{payload["jid"]} interrupted; back to its queue to resume" }
      {"requeue" => true}
    end
    # Rustq::OverLimit (a limiter inside the job was over its limit): the engine schedules the job
    # again — when the limiter may have room, if it knows — not a failure, not a retry.
    def over_limit(error, payload)
      @logger.info { "#{payload["wrapped"] || payload["class"]} JID-#{payload["jid"]} #{error.message}; scheduled again" }
      {"over_limit" => true, "message" => error.message, "retry_in" => error.retry_in}
    end
    private :interrupted?, :interrupted, :over_limit

    # #process for an ActiveJob wrapper's payload, given its parts (what rustq-worker hands over
    # when it can): `data` is the payload's args[0], `source.payload` makes the whole payload,
    # which only server middleware and a failure need.
    def process_active_job(data, jid, wrapper, queue, outlook, source)
      return process(source.payload, queue, outlook, source) if @sidekiq&.middleware?

      allowed!(wrapper, data)
      TraceContext.around(source) do
        Instrumentation.instrument("perform.rustq", {class: data["job_class"], jid: jid, queue: queue}) do
          if @reloader
            @reloader.wrap { Processor.run_active_job_data(data, jid, wrapper) }
          else
            Processor.run_active_job_data(data, jid, wrapper)
          end
        end
      end
      nil
    # As in #process.
    rescue Exception => e # rubocop:disable Lint/RescueException
      return over_limit(e, source.payload || {}) if e.is_a?(OverLimit)

      Thread.handle_interrupt(UNINTERRUPTIBLE) { failure(source.payload || {}, :active_job, e, outlook, queue, source) }
    end

    private

    # Runs the job of class `klass` (:active_job for an ActiveJob wrapper) inside the server
    # middleware, if any.
    def run(payload, queue, klass)
      if @sidekiq&.middleware?
        instance = self.class.instance(payload, klass)
        @sidekiq.around(instance, payload, queue) { self.class.execute(payload, klass, instance) }
      elsif klass == :active_job
        Processor.run_active_job(payload)
      else
        Processor.execute(payload, klass)
      end
    end

    # The answer for a failed job. Sidekiq's order: the job's own hooks, death handlers (when it
    # dies), then error handlers.
    def failure(payload, klass, error, outlook, queue, source)
      message = error_message(error)
      @logger.warn { "#{payload["wrapped"] || payload["class"]} JID-#{payload["jid"]} failed: #{error.class.name}: #{message}\n#{Array(error.backtrace).first(10).join("\n")}" }
      result = {
        "error_class" => error.class.name || error.class.to_s,
        "message" => message,
        "backtrace" => Array(error.backtrace).map { |line| utf8(line) }
      }
      # The engine has given up on this job (time limit: retried; shutdown: back on its queue)
      # and decides alone; like Sidekiq::Shutdown, this is no failure for hooks and handlers.
      return result if timed_out?(error)

      died = dies(payload, klass, error, outlook, queue, result)
      announce(died, payload, queue, error, result)
      if @sidekiq
        @sidekiq.job_died(died, error) if died
        @sidekiq.job_failed(error, payload, jobstr(source))
      end
      result
    end

    # What ActiveSupport::Notifications subscribers are told of a job (see Instrumentation).
    def event_fields(payload, queue)
      {class: payload["wrapped"] || payload["class"], jid: payload["jid"], queue: queue}
    end

    # retry.rustq or dead.rustq for a failed job (Instrumentation).
    def announce(died, payload, queue, error, result)
      if died
        Instrumentation.notify("dead.rustq") { event_fields(payload, queue).merge(error: error) }
      else
        Instrumentation.notify("retry.rustq") do
          event_fields(payload, queue).merge(error: error, retry_count: payload.key?("retry_count") ? payload["retry_count"] + 1 : 0)
        end
      end
    end

    # The payload's JSON for error handlers: as stored when the engine has it, else written anew.
    def jobstr(source)
      return source.payload_json if source.respond_to?(:payload_json)
      return source if source.is_a?(String)

      JSON.generate(source)
    rescue StandardError
      source.to_s
    end

    def timed_out?(error)
      3.times do
        return true if error.is_a?(JobTimeout)

        error = error.cause or return false
      end
      false
    end

    # Fills in what the engine does with the failed job (result["retry_in"]) and runs the job's
    # retry hooks. Returns the payload as death handlers see it when the job dies, else nil.
    def dies(payload, klass, error, outlook, queue, result)
      if error.is_a?(NotAJobClass)
        result["retry_in"] = "kill"
        return payload
      end
      # retry: false: Sidekiq hands death handlers the job as it was.
      return payload if outlook == "no_retry"

      msg = failed_payload(payload, result, queue)
      hooks = hooks_class(payload, klass)
      return (msg if outlook == "exhausted") unless hooks

      case outlook
      when "retry"
        retry_in = retry_in(hooks, msg["retry_count"], error, msg)
        result["retry_in"] = retry_in
        retries_exhausted(hooks, msg, error) if retry_in == "kill"
        msg if %w[kill discard].include?(retry_in)
      when "exhausted"
        retries_exhausted(hooks, msg, error)
        msg
      end
    end

    # Where the retry hooks live: the job class, or for an ActiveJob the class it wraps (as
    # Sidekiq 7.1.3+ reads them; an ActiveJob class has them from Sidekiq::Job::Options or
    # Rustq::Job::Options). nil when there is none to ask.
    def hooks_class(payload, klass)
      name = payload["wrapped"]
      return (klass if klass.is_a?(Class)) unless name

      wrapped = Object.const_get(name.to_s)
      wrapped if wrapped.is_a?(Class)
    # Unknown, or its file does not load (the job failed the same way): no hooks, as Sidekiq.
    rescue StandardError, ScriptError
      nil
    end

    # `sidekiq_retry_in { |count, exception| }`: what the engine will read of its value (whole
    # seconds, "kill", "discard", or nil for Sidekiq's formula; Native.retry_in is the engine's
    # one rule). A block that raises means the default.
    def retry_in(klass, count, error, msg)
      block = hook(klass, :sidekiq_retry_in_block)
      return unless block

      Native.retry_in(block.call(*[count, error, msg].first(block.arity.negative? ? 3 : block.arity)))
    rescue => e
      @logger.error { "#{klass.name}'s retry_in failed (#{e.class}: #{e.message}); using the default backoff" }
      nil
    end

    # `sidekiq_retries_exhausted { |job, exception| }`: called before the job goes to the dead set.
    def retries_exhausted(klass, msg, error)
      hook(klass, :sidekiq_retries_exhausted_block)&.call(msg, error)
    rescue => e
      @logger.error { "#{klass.name}'s retries_exhausted failed: #{e.class}: #{e.message}" }
    end

    def hook(klass, reader)
      klass.public_send(reader) if klass.respond_to?(reader)
    end

    # The payload as the hooks see it under Sidekiq: with this failure's fields filled in, by the
    # engine's own code (Native.failed_payload: what it writes into the retry or dead set).
    def failed_payload(payload, result, queue)
      Native.failed_payload(JSON.generate(payload), queue, result["error_class"], result["message"], result["backtrace"],
                            @wire_version)
    rescue StandardError => e
      @logger.error { "cannot fill in the failure of #{payload["jid"]} for its hooks (#{e.class}: #{e.message})" }
      payload
    end

    def error_message(error)
      # Ruby 3.1 appends error_highlight snippets and did_you_mean hints to `message`; Sidekiq
      # users see the message itself.
      # (The engine truncates it where it writes it.)
      message = error.respond_to?(:original_message) ? error.original_message : error.message
      utf8(message.to_s)
    rescue Exception # rubocop:disable Lint/RescueException
      UNREADABLE_MESSAGE
    end

    def utf8(text)
      text.to_s.dup.force_encoding(Encoding::UTF_8).scrub
    end
  end
end
