# frozen_string_literal: true

require "rustq"

module Rustq
  # Test modes, like Sidekiq::Testing (and on by default once required, like Sidekiq's):
  #
  #   require "rustq/testing"
  #   Rustq::Testing.fake!     # pushes go to in-memory queues: HardJob.jobs, HardJob.drain
  #   Rustq::Testing.inline!   # pushes run the job at once, in this thread
  #   Rustq::Testing.disable!  # pushes go to Redis again
  #   Rustq::Testing.inline! { ... } # a mode for the block only
  #
  # Fake and inline pushes get the same checks and normalisation as real ones (a bad push still
  # raises Rustq::InvalidJob) but never touch Redis.
  module Testing
    MODES = %i[fake inline disable].freeze

    class << self
      attr_reader :mode

      def fake!(&block)
        use(:fake, &block)
      end

      def inline!(&block)
        use(:inline, &block)
      end

      def disable!(&block)
        use(:disable, &block)
      end

      def fake?
        mode == :fake
      end

      def inline?
        mode == :inline
      end

      def disabled?
        mode == :disable
      end

      def enabled?
        !disabled?
      end

      private

      def use(mode)
        raise ArgumentError, "unknown mode #{mode}" unless MODES.include?(mode)
        return @mode = mode unless block_given?

        previous = @mode
        begin
          @mode = mode
          yield
        ensure
          @mode = previous
        end
      end
    end

    # Jobs pushed in fake mode, by queue and by class name. Each class's list is one Array that
    # lives as long as the test, so `expect { ... }.to change(HardJob.jobs, :size)` works.
    module Queues
      class << self
        def [](queue)
          jobs_by_queue[queue.to_s]
        end

        def push(job)
          jobs_by_queue[job["queue"]] << job
          jobs_by_class[job["class"]] << job
        end

        def jobs_by_queue
          @jobs_by_queue ||= Hash.new { |hash, key| hash[key] = [] }
        end

        def jobs_by_class
          @jobs_by_class ||= Hash.new { |hash, key| hash[key] = [] }
        end

        def delete(job)
          jobs_by_queue[job["queue"]].delete_if { |j| j["jid"] == job["jid"] }
          jobs_by_class[job["class"]].delete_if { |j| j["jid"] == job["jid"] }
        end

        def clear_for(class_name)
          jobs_by_class[class_name].each { |job| jobs_by_queue[job["queue"]].delete(job) }
          jobs_by_class[class_name].clear
        end

        def clear_all
          jobs_by_queue.clear
          jobs_by_class.clear
        end
      end
    end

    # Replaces Rustq::Client's one exit to Redis while a test mode is on.
    module FakeClient
      private

      def raw_push(item, bulk)
        return super if Testing.disabled?

        items = bulk == :payloads ? item : [item]
        payloads = items.flat_map { |each| Native.prepare(each, bulk == true) }.map { |json| JSON.parse(json) }
        payloads.each do |payload|
          Testing.fake? ? Queues.push(payload) : Rustq::Job.run(payload)
        end
        payloads.map { |payload| payload["jid"] }
      end
    end
    Rustq::Client.singleton_class.prepend(FakeClient)

    # HardJob.jobs, .clear, .drain, .perform_one in fake mode.
    module JobClassMethods
      def jobs
        Queues.jobs_by_class[name]
      end

      def clear
        Queues.clear_for(name)
      end

      # Runs every queued job of this class, including any they push, until none is left.
      def drain
        while (job = jobs.first)
          Queues.delete(job)
          Rustq::Job.run(job)
        end
      end

      def perform_one
        job = jobs.first or raise EmptyQueueError, "perform_one called with empty job queue"
        Queues.delete(job)
        Rustq::Job.run(job)
      end
    end
    Rustq::Job::ClassMethods.include(JobClassMethods)

    class EmptyQueueError < RuntimeError; end
  end

  module Job
    class << self
      # Every job pushed in fake mode, any class.
      def jobs
        Testing::Queues.jobs_by_queue.values.flatten
      end

      def clear_all
        Testing::Queues.clear_all
      end

      # Runs every queued job (ActiveJob ones too) until none is left.
      def drain_all
        while (job = jobs.first)
          Testing::Queues.delete(job)
          run(job)
        end
      end
    end
  end
end

Rustq::Testing.fake!
