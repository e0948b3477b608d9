# frozen_string_literal: true

# The part of the opentelemetry-api gem rustq calls, for specs: the gem is not installable on the
# machines the specs run on (no RubyGems; Debian does not package it). Same names, same
# signatures: `OpenTelemetry.propagation.inject(carrier)` / `.extract(carrier)` and
# `OpenTelemetry::Context.current` / `.with_current(context) { }`. A context here is just the
# W3C headers it was made from. Used as `stub_const("OpenTelemetry", OpenTelemetryStandIn)`, or
# assigned to `OpenTelemetry` by a fixture app.
module OpenTelemetryStandIn
  class Context
    attr_reader :headers

    def initialize(headers = {})
      @headers = headers
    end

    def self.current
      Thread.current[:open_telemetry_stand_in] || new
    end

    def self.with_current(context)
      previous = Thread.current[:open_telemetry_stand_in]
      Thread.current[:open_telemetry_stand_in] = context
      yield context
    ensure
      Thread.current[:open_telemetry_stand_in] = previous
    end
  end

  module Propagation
    def self.inject(carrier, context: Context.current)
      carrier.merge!(context.headers)
    end

    def self.extract(carrier, context: Context.current)
      Context.new(carrier.slice("traceparent", "tracestate", "baggage"))
    end
  end

  def self.propagation = Propagation
end
