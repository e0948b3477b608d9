# frozen_string_literal: true

require "json"
require "time"

module Rustq
  # Recurring jobs, kept in sidekiq-cron 2.x's Redis keys (so its API and Web UI tab see them too)
  # and run by every `rustq-worker`'s scheduler. Schedules made here are "dynamic": a schedule file
  # never removes them.
  #
  #   Rustq::Cron.create("nightly report", cron: "0 3 * * * Europe/Berlin", class: "ReportJob", queue: "low")
  #   Rustq::Cron.disable("nightly report")
  #   Rustq::Cron.find("nightly report").next_time
  module Cron
    # A schedule that cannot run (its message names it and the key); nothing was written.
    class InvalidSchedule < ::ArgumentError; end
    # No schedule of that name.
    class ScheduleNotFound < Rustq::Error; end

    # A schedule as read back.
    Schedule = Struct.new(:name, :namespace, :cron, :klass, :args, :queue, :retry, :description, :status,
                          :source, :active_job, :date_as_argument, :missed, :missed_cap, :overlap,
                          :last_enqueue_time, :next_time, keyword_init: true) do
      def enabled? = status == "enabled"

      # The latest enqueues, newest first: [{jid:, enqueued:}] (sidekiq-cron's jid history).
      def jid_history = Cron.jid_history(name, namespace: namespace)
    end

    KEYS = %i[cron class args queue retry description status active_job date_as_argument queue_name_prefix
              queue_name_delimiter missed missed_cap overlap namespace].freeze

    class << self
      # Creates or updates a schedule. `class:` is a class or its name; an ActiveJob class is
      # enqueued as an ActiveJob unless `active_job: false`. Keys as in a schedule file:
      # cron, class, args, queue, retry, description, status, active_job, date_as_argument,
      # missed (skip | latest | all), missed_cap, overlap (allow | skip_if_running | skip_if_queued).
      def create(name, **spec)
        unknown = spec.keys - KEYS
        raise InvalidSchedule, "schedule #{name.to_s.inspect}: unknown #{unknown.map { |k| "`#{k}`" }.join(", ")}" if unknown.any?

        klass = spec[:class]
        spec[:class] = klass.name if klass.is_a?(Module)
        spec[:active_job] = active_job_class?(klass) if spec[:active_job].nil? && klass
        spec[:args] = Array(spec[:args]) if spec.key?(:args) && !spec[:args].is_a?(Array)
        spec[:namespace] ||= "default"
        Native.cron_save(name.to_s, JSON.generate(spec.compact.transform_keys(&:to_s)))
        find(name, namespace: spec[:namespace])
      end

      # Changes some keys of a schedule, keeping the others.
      def update(name, namespace: "default", **changes)
        current = find(name, namespace: namespace) or raise ScheduleNotFound, "no schedule named #{name.to_s.inspect}"
        spec = { cron: current.cron, class: current.klass, args: current.args, queue: current.queue,
                 retry: current.retry, description: current.description, active_job: current.active_job,
                 date_as_argument: current.date_as_argument, missed: current.missed,
                 missed_cap: current.missed_cap, overlap: current.overlap }
        create(name, **spec.merge(changes), namespace: namespace)
      end

      def find(name, namespace: "default")
        json = Native.cron_find(namespace.to_s, name.to_s)
        json && schedule(JSON.parse(json))
      end

      def all(namespace: "default")
        JSON.parse(Native.cron_all(namespace.to_s)).reject { |s| s["error"] }.map { |s| schedule(s) }
      end

      def destroy(name, namespace: "default") = Native.cron_destroy(namespace.to_s, name.to_s)

      def enable(name, namespace: "default") = Native.cron_status(namespace.to_s, name.to_s, true)

      def disable(name, namespace: "default") = Native.cron_status(namespace.to_s, name.to_s, false)

      # Enqueues the schedule's job now, enabled or not; returns its jid.
      def enqueue(name, namespace: "default") = Native.cron_enqueue(namespace.to_s, name.to_s)

      def jid_history(name, namespace: "default")
        JSON.parse(Native.cron_history(namespace.to_s, name.to_s)).map { |jid, at| { jid: jid, enqueued: at } }
      end

      private

      def schedule(data)
        last = data["last_enqueue_time"]
        Schedule.new(
          **data.slice(*%w[name namespace cron args queue retry description status source active_job
                           date_as_argument missed missed_cap overlap]).transform_keys(&:to_sym),
          klass: data["class"],
          last_enqueue_time: last && Time.strptime(last, "%Y-%m-%d %H:%M:%S %z"),
          next_time: data["next_time"] && Time.at(data["next_time"]).utc
        )
      end

      def active_job_class?(klass)
        return false unless defined?(::ActiveJob::Base)

        klass = Object.const_get(klass) if klass.is_a?(String)
        klass.is_a?(Class) && klass < ::ActiveJob::Base
      rescue NameError
        false
      end
    end
  end
end
