# frozen_string_literal: true

require "rustq" unless defined?(Rustq::Client)
require "active_job"

module Rustq
  # ActiveJob on Rails < 7.1 has no `successfully_enqueued`; give it 7.1's accessors so bulk
  # enqueueing can report per job on every Rails version.
  module EnqueueResult
    attr_writer :successfully_enqueued

    def successfully_enqueued?
      @successfully_enqueued == true
    end
  end

  # ActiveJob.perform_all_later for every Rails version: Rails 7.1+ has it, older Rails get the
  # same bulk path through the adapter's enqueue_all (other adapters enqueue one by one).
  def self.perform_all_later(*jobs)
    jobs = jobs.flatten
    return ::ActiveJob.perform_all_later(jobs) if ::ActiveJob.respond_to?(:perform_all_later)

    jobs.group_by(&:queue_adapter).each do |adapter, group|
      adapter.respond_to?(:enqueue_all) ? adapter.enqueue_all(group) : group.each(&:enqueue)
    end
    nil
  end
end

ActiveSupport.on_load(:active_job) do
  include Rustq::EnqueueResult unless method_defined?(:successfully_enqueued?)
  # Solid Queue's limits_concurrency and activejob-uniqueness' unique, unless those gems are here.
  extend Rustq::ActiveJobLimits unless respond_to?(:limits_concurrency) || respond_to?(:unique)
end

module ActiveJob
  module QueueAdapters
    # `config.active_job.queue_adapter = :rustq`. Writes what Rails' Sidekiq adapter writes
    # (class JobWrapper, wrapped, queue, args: [job.serialize]), so Sidekiq runs these jobs.
    class RustqAdapter
      JOB_WRAPPER = Rustq::Job::ACTIVE_JOB_WRAPPERS.first

      def enqueue(job)
        pushed(job, Rustq::Client.push(item_for(job)))
      end

      def enqueue_at(job, timestamp)
        pushed(job, Rustq::Client.push(item_for(job).merge("at" => timestamp.to_f)))
      end

      # One push_bulk per class, queue and kind (now or scheduled). Sets provider_job_id and
      # successfully_enqueued on every job; returns how many were enqueued.
      def enqueue_all(jobs)
        # Jobs with limits carry fields of their own: each pushed alone.
        limited, jobs = jobs.partition { |job| limited?(job) }
        limited.each do |job|
          item = item_for(job)
          item["at"] = job.scheduled_at.to_f if job.scheduled_at
          pushed(job, Rustq::Client.push(item), bulk: true)
        end
        limited.count(&:successfully_enqueued?) + jobs.group_by { |job| [job.class, job.queue_name, job.scheduled_at.nil?] }.sum do |_, group|
          item = item_for(group.first).merge("args" => group.map { |job| [job.serialize] })
          item["at"] = group.map { |job| job.scheduled_at.to_f } if group.first.scheduled_at
          jids = Rustq::Client.push_bulk(item)
          group.zip(jids) do |job, jid|
            job.provider_job_id = jid
            # nil: a Sidekiq client middleware stopped this job's push.
            job.successfully_enqueued = !jid.nil?
          end
          jids.compact.size
        end
      end

      # Rails 7.2: enqueue only once the surrounding transaction commits, so a job never runs
      # before the rows it reads exist.
      def enqueue_after_transaction_commit?
        true
      end

      # Rails 8.1 continuations: true while this process's rustq worker shuts down.
      def stopping?
        Rustq.stopping?
      end

      private

      def item_for(job)
        item = {
          "class" => JOB_WRAPPER,
          "wrapped" => job.class,
          "queue" => job.queue_name,
          "args" => [job.serialize]
        }
        limited?(job) ? item.merge(Rustq::ActiveJobLimits.fields(job)) : item
      end

      def limited?(job)
        klass = job.class
        klass.respond_to?(:rustq_concurrency) && (klass.rustq_concurrency || klass.rustq_unique)
      end

      # nil from a push that went through: a middleware stopped it, or its unique lock is held.
      # A unique conflict does what the class's on_conflict says; then, on ActiveJob 7.1+, an
      # ActiveJob::EnqueueError, so perform_later returns false as for any job not enqueued
      # (ActiveJob sets successfully_enqueued itself once the adapter returns).
      def pushed(job, jid, bulk: false)
        job.successfully_enqueued = !jid.nil? if job.respond_to?(:successfully_enqueued=)
        job.provider_job_id = jid
        return jid unless jid.nil? && job.class.respond_to?(:rustq_unique) && job.class.rustq_unique

        Rustq::ActiveJobLimits.conflict(job)
        raise ::ActiveJob::EnqueueError, "#{job.class.name} not enqueued: a job with the same arguments holds its unique lock" if !bulk && defined?(::ActiveJob::EnqueueError)

        jid
      end
    end
  end
end
