# frozen_string_literal: true

module Rustq
  # ActiveSupport::Notifications events for the steps of a job's life that Rails' own events
  # (`enqueue.active_job`, `perform.active_job`, ...) do not cover, so an app's subscribers
  # (StatsD, Datadog, its logs) see every job, ActiveJob or not:
  #
  #   enqueue.rustq   a push (one event per push or push_bulk call; not for ActiveJob's
  #                   perform_later, which enqueue.active_job reports): class, jids, queue, at
  #   perform.rustq   around each job rustq-worker runs, ActiveJob's included; a job that raised
  #                   has :exception and :exception_object, as every instrumented block
  #                   class, jid, queue
  #   retry.rustq     a failed job goes to the retry set: class, jid, queue, error, retry_count
  #   dead.rustq      a failed job dies (the dead set, or dropped for `retry: false`):
  #                   class, jid, queue, error
  #
  # `class` is the job's own class name (an ActiveJob job's, not the wrapper's). Events nobody
  # subscribes to cost a Hash lookup; without ActiveSupport, nothing.
  module Instrumentation
    class << self
      # Runs the block inside event `name` when someone listens, else just runs it.
      def instrument(name, payload_fields)
        return yield unless listening?(name)

        ::ActiveSupport::Notifications.instrument(name, payload_fields) { yield }
      end

      # Publishes event `name` when someone listens; `fields` is a block so nothing is built
      # otherwise.
      def notify(name)
        ::ActiveSupport::Notifications.instrument(name, yield) if listening?(name)
      end

      private

      def listening?(name)
        defined?(::ActiveSupport::Notifications) && ::ActiveSupport::Notifications.notifier.listening?(name)
      end
    end
  end
end
