# frozen_string_literal: true

module Rustq
  # W3C trace context across the push and the job, when the app loads OpenTelemetry (rustq itself
  # needs none of it):
  #
  # - a push carries the caller's context as top-level payload keys (`traceparent`, `tracestate`,
  #   `baggage`), where opentelemetry-instrumentation-sidekiq's client middleware writes them, so
  #   Sidekiq processes with that instrumentation continue it too. A payload that has them
  #   already (that middleware ran) keeps its own.
  # - in `rustq-worker`, a job runs inside the context the engine hands over: its consumer span's
  #   when the engine exports traces (`otlp_endpoint`), else the push's. The app's
  #   instrumentation (ActiveRecord, Net::HTTP, ...) then continues the pusher's trace.
  module TraceContext
    KEYS = %w[traceparent tracestate baggage].freeze

    class << self
      # `item` with the current context added (the same Hash when there is none to add).
      def inject(item)
        return item unless loaded? && !item.key?("traceparent")

        carrier = {}
        ::OpenTelemetry.propagation.inject(carrier)
        carrier.empty? ? item : item.merge(carrier.slice(*KEYS))
      end

      # Runs the block inside the context of the job `source` stands for: rustq-worker's running
      # job (its `trace_context`, from the engine), or a payload Hash (its own keys: inline runs).
      def around(source, &block)
        return yield unless loaded?

        carrier = source.respond_to?(:trace_context) ? source.trace_context : source.slice(*KEYS)
        return yield if carrier.nil? || carrier.empty?

        ::OpenTelemetry::Context.with_current(::OpenTelemetry.propagation.extract(carrier), &block)
      end

      private

      def loaded?
        defined?(::OpenTelemetry::Context) && ::OpenTelemetry.respond_to?(:propagation)
      end
    end
  end
end
