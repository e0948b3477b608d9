# frozen_string_literal: true

require "json"

module Rustq
  # Include in a job class for Sidekiq's client API; a drop-in for Sidekiq::Job/Sidekiq::Worker:
  #
  #   class HardJob
  #     include Rustq::Job
  #     rustq_options queue: "critical", retry: 5   # or sidekiq_options
  #
  #     def perform(id, name)
  #     end
  #   end
  #
  #   HardJob.perform_async(1, "bob")
  #   HardJob.perform_in(5.minutes, 1, "bob")
  #   HardJob.set(queue: "low", wait: 30).perform_async(1, "bob")
  #   HardJob.perform_bulk([[1, "a"], [2, "b"]])
  #
  # Payloads are byte-compatible with Sidekiq's, key order included, so Sidekiq can run them.
  module Job
    # The class an ActiveJob payload names: the first is the one rustq's adapter writes (Rails'
    # own, which every Sidekiq runs); Sidekiq 7.3+/8 also know their own alias. Payloads of these
    # classes whose args[0] is a Hash go to Processor#process_active_job in the Ruby host.
    ACTIVE_JOB_WRAPPERS = %w[
      ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper
      Sidekiq::ActiveJob::Wrapper
    ].freeze

    attr_accessor :jid
    # Set by Sidekiq 7+'s processor on every job it runs (its `interrupted?` asks it): a Sidekiq
    # process in the fleet runs Rustq::Job classes too.
    attr_accessor :_context
    # The batch this job belongs to (Sidekiq Pro's `bid`), nil outside one.
    attr_accessor :bid

    # This job's batch, to add jobs to it (`batch.jobs { … }`), nil outside one.
    def batch
      bid && Rustq::Batch.new(bid)
    end

    # Sidekiq Pro's check for jobs of an invalidated batch: false once `invalidate_all` ran.
    def valid_within_batch?
      batch.nil? || batch.valid?
    end

    def self.included(base)
      if base.ancestors.any? { |c| c.name == "ActiveJob::Base" }
        raise ArgumentError, "Rustq::Job cannot be included in an ActiveJob: #{base.name}"
      end

      base.extend(ClassMethods)
    end

    # Runs a payload in this process, as a worker would (see Rustq::Processor.execute): the job
    # class by name, a new instance, its jid, perform(*args); an ActiveJob payload through
    # ActiveJob::Base.execute. A constant that is not a job class raises Rustq::NotAJobClass.
    def self.run(payload)
      Rustq::Processor.execute(payload)
    end

    def logger
      Rustq.logger
    end

    # Options and retry hooks, without the client API: what Rustq::Job classes get, and what an
    # ActiveJob class gets from `include Rustq::Job::Options` (as from Sidekiq::Job::Options):
    #
    #   class ChargeJob < ApplicationJob
    #     include Rustq::Job::Options
    #     sidekiq_options retry: 3
    #     sidekiq_retry_in { |count, error| error.is_a?(Timeout::Error) ? 10 : :kill }
    #     sidekiq_retries_exhausted { |job, error| Billing.give_up(job["args"]) }
    #   end
    #
    # rustq-worker reads an ActiveJob class's hooks as Sidekiq 7.1.3+ does (its `wrapped` class).
    module Options
      def self.included(base)
        base.extend(ClassMethods)
      end

      module ClassMethods
        # Options for this class's jobs (queue, retry, backtrace, tags or anything else: every key
        # ends up in the payload). Subclasses inherit and may override.
        def rustq_options(options = {})
          @rustq_options = own_rustq_options.merge(options.transform_keys(&:to_s)).freeze
        end
        alias_method :sidekiq_options, :rustq_options

        # The options a push starts from: the configured defaults, then each ancestor's options.
        def get_rustq_options
          inherited = superclass.respond_to?(:get_rustq_options) ? superclass.get_rustq_options : Rustq.default_job_options
          inherited.merge(own_rustq_options)
        end
        alias_method :get_sidekiq_options, :get_rustq_options

        # Delay before the next retry: a block of (count, exception, job) answering seconds,
        # :kill or :discard. Kept on the class for the worker that runs it.
        def rustq_retry_in(&block)
          @rustq_retry_in_block = block
        end
        alias_method :sidekiq_retry_in, :rustq_retry_in

        # Called with (job, exception) when the last retry failed.
        def rustq_retries_exhausted(&block)
          @rustq_retries_exhausted_block = block
        end
        alias_method :sidekiq_retries_exhausted, :rustq_retries_exhausted

        def rustq_retry_in_block
          inherited_ivar(:@rustq_retry_in_block, :rustq_retry_in_block)
        end
        alias_method :sidekiq_retry_in_block, :rustq_retry_in_block

        def rustq_retries_exhausted_block
          inherited_ivar(:@rustq_retries_exhausted_block, :rustq_retries_exhausted_block)
        end
        alias_method :sidekiq_retries_exhausted_block, :rustq_retries_exhausted_block

        private

        def own_rustq_options
          @rustq_options || {}
        end

        def inherited_ivar(ivar, reader)
          return instance_variable_get(ivar) if instance_variable_defined?(ivar)

          superclass.public_send(reader) if superclass.respond_to?(reader)
        end
      end
    end

    module ClassMethods
      include Options::ClassMethods

      def queue_as(queue)
        rustq_options("queue" => queue.to_s)
      end

      def set(options)
        Setter.new(self, options)
      end

      def perform_async(*args)
        Setter.new(self, {}).perform_async(*args)
      end

      # Runs the job now, in this process, after the same checks and JSON round trip as a push.
      def perform_inline(*args)
        Setter.new(self, {}).perform_inline(*args)
      end
      alias_method :perform_sync, :perform_inline

      # Pushes one job per Array of args, 1,000 per round trip. Returns the jids.
      def perform_bulk(*args, **kwargs)
        Setter.new(self, {}).perform_bulk(*args, **kwargs)
      end

      # `interval`: seconds from now (Numeric, ActiveSupport::Duration) or an epoch time/Time.
      # Sidekiq 6.4's class-level perform_in writes "class" before "args"; so does this.
      def perform_in(interval, *args)
        item = {"class" => self, "args" => args}
        at = Setter.schedule_time(interval)
        item["at"] = at if at
        client_push(item)
      end
      alias_method :perform_at, :perform_in

      def client_push(item) # :nodoc:
        Rustq::Client.push(item)
      end
    end

    # `HardJob.set(queue: "low", wait: 30)`: options for the next push, as Sidekiq's Setter.
    class Setter
      # Below this a time is an interval from now, above it an epoch time (Sidekiq's rule).
      RELATIVE_LIMIT = 1_000_000_000

      # The epoch time to schedule at, or nil when it is not in the future (push now).
      def self.schedule_time(interval)
        value = interval.to_f
        now = Time.now.to_f
        at = value < RELATIVE_LIMIT ? now + value : value
        at if at > now
      end

      def initialize(klass, options)
        @klass = klass
        @options = {}
        set(options)
      end

      # ActiveJob's wait:/wait_until: become "at"; everything else goes into the payload.
      def set(options)
        options = options.transform_keys(&:to_s)
        interval = options.delete("wait_until") || options.delete("wait")
        @options.merge!(options)
        at(interval) if interval
        self
      end

      # Sidekiq's order: the options, then "args", then "class".
      def perform_async(*args)
        @klass.client_push(@options.merge("args" => args, "class" => @klass))
      end

      def perform_in(interval, *args)
        at(interval).perform_async(*args)
      end
      alias_method :perform_at, :perform_in

      def perform_bulk(args, batch_size: 1_000)
        args.each_slice(batch_size).flat_map do |slice|
          Rustq::Client.push_bulk(@options.merge("class" => @klass, "args" => slice))
        end
      end

      def perform_inline(*args)
        item = Rustq::Client.send(:normalize, @options.merge("args" => args, "class" => @klass))
        item.delete("at")
        payload = JSON.parse(Native.prepare(item, false).first)
        Rustq::Job.run(payload)
        true
      end
      alias_method :perform_sync, :perform_inline

      private

      def at(interval)
        at = self.class.schedule_time(interval)
        at ? @options["at"] = at : @options.delete("at")
        self
      end
    end
  end
end
